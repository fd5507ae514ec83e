"""Chat SFT: response-only loss by hand, pair rendering and truncation, the curriculum, batches without
leaks, bad input, and a tiny end-to-end run of train_sft.py with exact resume."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_sft
from minitoddler.chatml import IM_END
from minitoddler.checkpoint import save_model
from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.model import ToddlerLM
from minitoddler.sft import (DEFAULT_STAGES, Stage, StagePlan, TooLong, check_scores, collate, pair_example,
                             parse_stages, plan_curriculum, read_pairs, response_loss_sum, scale_curriculum,
                             stage_batch, stage_subsets, top_fraction)
from minitoddler.tokenizer import load_tokenizer, train_tokenizer
from minitoddler.trainer import check_finite

REPO = Path(__file__).resolve().parents[1]


def real_pairs(shared_data, n):
    """Caregiver -> child pairs from the naturalistic DPO file (real CHILDES turns), as pairs rows."""
    rows = json.loads((shared_data / "dpo" / "naturalistic_pairs.json").read_text())[:n]
    strip = lambda s: s.split(":", 1)[1].strip()  # "*MOT: text" -> "text"
    return [{"prompt": strip(r["prompt"]), "response": strip(r["chosen"]), "prompt_speaker": "MOT",
             "score": len(strip(r["chosen"]).split()) + i / 1000} for i, r in enumerate(rows)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("tok")
    texts = [t for r in real_pairs(shared_data, 2000) for t in (r["prompt"], r["response"])]
    train_tokenizer(texts, d, vocab_size=512)
    return d


def test_response_loss_matches_hand_computation():
    logits = torch.tensor([[[9.0, -9.0, 9.0], [1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [4.0, 4.0, 4.0]]])
    ids = torch.tensor([[0, 1, 2, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])  # targets 2 (from position 1) and 1 (from position 2) count
    loss, n = response_loss_sum(logits, ids, mask)
    hand = -(3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))) \
           - (-1.0 - math.log(math.exp(0.5) + math.exp(-1.0) + math.exp(0.0)))
    assert n == 2
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    logits[0, 0] = torch.tensor([-5.0, 7.0, 1.0])  # predicts a masked (prompt) token: must not matter
    logits[0, 3] = torch.tensor([0.0, 0.0, 50.0])  # predicts past the end: must not matter
    assert response_loss_sum(logits, ids, mask)[0].item() == pytest.approx(hand, rel=1e-6)


def test_pair_example_masks_reply_and_truncates_only_the_prompt(tok_dir):
    tok = load_tokenizer(tok_dir)
    row = {"prompt": "do you want more apple or do you want the banana now", "response": "apple",
           "_where": "pairs.jsonl:7"}
    ex, dropped = pair_example(tok, row, max_len=200, system_prompt="be a child.")
    assert dropped == 0
    masked = [t for t, m in zip(ex.ids, ex.mask) if m]
    assert masked[-1] == tok.token_to_id(IM_END) and tok.decode(masked[:-1]) == "apple"
    full = len(ex.ids)
    short, dropped = pair_example(tok, row, max_len=full - 4, system_prompt="be a child.")
    assert dropped == 4 and len(short.ids) == full - 4
    assert [t for t, m in zip(short.ids, short.mask) if m] == masked  # the reply is whole
    assert short.ids[-8:] == ex.ids[-8:] and short.ids[:5] == ex.ids[:5]  # cut inside the caregiver line
    with pytest.raises(ValueError, match=r"pairs.jsonl:7: the child reply .* context of 10"):
        pair_example(tok, row, max_len=10, system_prompt="be a child.")

    # A reply too long for the context stops the run, or with skip_too_long is left out and listed.
    story = {"prompt": "what happened?", "response": "and then the doggie ran away " * 8, "_where": "p.jsonl:2",
             "q": 0.9}
    rows = [dict(row, q=0.5), story, dict(row, q=0.1, _where="p.jsonl:3")]
    with pytest.raises(TooLong, match="p.jsonl:2: .*--skip-too-long"):
        stage_subsets(rows, [Stage(1.0, 1e-3, 1)], None, tok, full - 2, "be a child.")
    subsets, truncated, skipped = stage_subsets(rows, [Stage(1.0, 1e-3, 1)], None, tok, full - 2, "be a child.",
                                                skip_too_long=True)
    assert skipped == ["p.jsonl:2"] and len(subsets[0]) == 2
    assert truncated == 2  # both caregiver lines lost 2 tokens; the reply was kept whole
    with pytest.raises(ValueError, match="stage 2 .* no pairs left"):  # its one pair (the best) was too long
        stage_subsets(rows, [Stage(1.0, 1e-3, 1), Stage(0.34, 1e-3, 1)], "q", tok, full - 2, "be a child.",
                      skip_too_long=True)


def test_padding_does_not_leak_between_examples():
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vocab_size = 50
    model = ToddlerLM(cfg).eval()
    from minitoddler.sft import Example
    a, b = Example([5, 6, 7, 8, 9, 10], [0, 0, 0, 1, 1, 1]), Example([11, 12, 13], [0, 1, 1])
    ids, mask = collate([a, b], pad_id=3)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 3, 3, 3]]
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    batched = model(ids)
    torch.testing.assert_close(batched[1, :3], model(torch.tensor([b.ids]))[0], atol=1e-5, rtol=1e-5)
    loss, n = response_loss_sum(batched, ids, mask)
    la, na = response_loss_sum(model(torch.tensor([a.ids])), torch.tensor([a.ids]), torch.tensor([a.mask]))
    lb, nb = response_loss_sum(model(torch.tensor([b.ids])), torch.tensor([b.ids]), torch.tensor([b.mask]))
    assert (n, na, nb) == (5, 3, 2)
    assert loss.item() == pytest.approx((la + lb).item(), rel=1e-5)


def test_curriculum_order_subset_sizes_and_steps(tok_dir):
    tok = load_tokenizer(tok_dir)
    rng = random.Random(0)
    pairs = [{"prompt": f"look at {i}", "response": "ball" if i % 2 else "doggie", "q": rng.random(),
              "_where": f"p.jsonl:{i + 1}"} for i in range(400)]
    assert [(s.top, s.lr, s.epochs) for s in DEFAULT_STAGES] == \
        [(0.10, 9e-4, 2), (0.05, 8e-4, 14), (0.025, 7e-4, 7), (0.0125, 6e-4, 3)]
    subsets = [top_fraction(pairs, s.top, "q") for s in DEFAULT_STAGES]
    assert [len(s) for s in subsets] == [40, 20, 10, 5]
    ranked = sorted(pairs, key=lambda r: r["q"], reverse=True)
    for subset in subsets:
        assert min(r["q"] for r in subset) == ranked[len(subset) - 1]["q"]  # exactly the best ones
    for bigger, smaller in zip(subsets, subsets[1:]):
        assert {id(r) for r in smaller} <= {id(r) for r in bigger}

    examples, truncated, skipped = stage_subsets(pairs, DEFAULT_STAGES, "q", tok, 64, "be a child.")
    assert [len(e) for e in examples] == [40, 20, 10, 5] and truncated == 0 and skipped == []
    plans = plan_curriculum(DEFAULT_STAGES, examples, batch_size=8)
    assert [p.steps for p in plans] == [10, 35, 9, 2]  # ceil(40*2/8), ceil(20*14/8), ceil(10*7/8), ceil(5*3/8)
    # One epoch of a stage visits every example once; the stream is a function of the step (resume).
    first_epoch = [id(e) for s in range(5) for e in stage_batch(plans[0].examples, 0, s, 8, seed=1)]
    assert sorted(first_epoch) == sorted(id(e) for e in plans[0].examples)
    assert stage_batch(plans[1].examples, 1, 3, 8, 1) == stage_batch(plans[1].examples, 1, 3, 8, 1)

    with pytest.raises(ValueError, match="top 0.0125 of 10 pairs is empty"):
        top_fraction(pairs[:10], 0.0125, "q")
    with pytest.raises(ValueError, match="needs a score"):
        top_fraction(pairs, 0.5, None)


def test_stages_from_file_and_flag_and_bad_specs(tmp_path):
    f = tmp_path / "stages.json"
    f.write_text(json.dumps([{"top": 0.5, "lr": 1e-3, "epochs": 1}, {"top": 0.25, "lr": 5e-4, "epochs": 2.5}]))
    assert parse_stages(str(f)) == [Stage(0.5, 1e-3, 1), Stage(0.25, 5e-4, 2.5)]
    assert parse_stages("1:9e-4:2,0.1:6e-4:3") == [Stage(1.0, 9e-4, 2), Stage(0.1, 6e-4, 3)]
    with pytest.raises(ValueError, match="top:lr:epochs"):
        parse_stages("0.1:9e-4")
    with pytest.raises(ValueError, match="0 < top <= 1"):
        parse_stages("1.5:9e-4:2")
    f.write_text('[{"top": 0.5}]')
    with pytest.raises(ValueError, match="stages.json: expected a JSON list"):
        parse_stages(str(f))


def test_bad_pairs_files_name_file_and_line(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"prompt": "hi", "response": "hi"}\n{"prompt": "where?", "reply": "there"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing or empty 'response'"):
        read_pairs(p)
    p.write_text('{"prompt": "hi", "response": "hi"}\n{"prompt": "hi", "response": "hi"\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: not valid JSON"):
        read_pairs(p)
    p.write_text("\n")
    with pytest.raises(ValueError, match="no pairs"):
        read_pairs(p)
    with pytest.raises(FileNotFoundError, match="minitoddler.data.prepare"):
        read_pairs(tmp_path / "missing.jsonl")
    p.write_text('{"prompt": "a", "response": "b", "coherence": 0.5}\n{"prompt": "a", "response": "b"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: score column 'coherence' is missing"):
        check_scores(read_pairs(p), "coherence")


def sft_args(model_dir, data, out, *extra):
    return parse_config(train_sft.SFTConfig, argv=[
        "--model", str(model_dir), "--data", str(data), "--out", str(out), "--device", "cpu",
        "--batch-size", "8", "--device-batch-size", "4", "--eval-every", "4", "--eval-pairs", "16",
        "--samples", "2", "--log-every", "1", "--save-every", "1000", *extra])


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory, tok_dir, shared_data):
    """A tiny random 'pretrained' model with our tokenizer, and 200/40 real train/val pairs."""
    d = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vocab_size = load_tokenizer(tok_dir).get_vocab_size()
    base = save_model(ToddlerLM(cfg), d / "base", tokenizer=tok_dir)
    rows = real_pairs(shared_data, 240)
    (d / "pairs").mkdir()
    write_jsonl(d / "pairs" / "train.jsonl", rows[:200])
    write_jsonl(d / "pairs" / "val.jsonl", rows[200:])
    return base, d / "pairs"


def test_sft_end_to_end_with_lora_and_exact_resume(tmp_path, sft_setup, capsys):
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and the 2 shared cores stay free
    base, data = sft_setup
    stages = ("--stages", "0.5:3e-3:1,0.2:2e-3:2", "--score-column", "score")

    # Full fine-tuning: 13 + 10 steps, the loss on the replies falls, HF-layout export.
    final = train_sft.main(sft_args(base, data, tmp_path / "full", *stages))
    printed = capsys.readouterr().out
    assert "stage 1: top 0.5 = 100 pairs" in printed and "stage 2: top 0.2 = 40 pairs" in printed
    assert printed.count("  caregiver: ") == 2 and "(before: " in printed  # sample replies, before/after
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 13 + 10 and [m["stage"] for m in metrics if "loss" in m][12:14] == [1, 2]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (final / "model.safetensors").is_file() and "chat_template" in (final / "tokenizer_config.json").read_text()

    # LoRA, interrupted after 9 steps and resumed, ends identical to an uninterrupted run.
    lora = ("--lora-rank", "4", "--lora-dropout", "0.1", "--lora-targets", "q,k,v,o,gate,up,down")
    lora += ("--samples", "0")
    whole = train_sft.main(sft_args(base, data, tmp_path / "whole", *stages, *lora))
    train_sft.main(sft_args(base, data, tmp_path / "split", *stages, *lora, "--stop-after", "9"))
    resumed = train_sft.main(sft_args(base, data, tmp_path / "split", *stages, *lora, "--resume"))
    capsys.readouterr()
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert set(a) == set(load_file(str(base / "model.safetensors")))  # merged: plain HF layout
    assert all(torch.equal(a[k], b[k]) for k in a)
    adapter = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 7 * 2 and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)

    with pytest.raises(ValueError, match="settings differ .* lora: was {'rank': 4"):
        train_sft.main(sft_args(base, data, tmp_path / "split", *stages, "--resume"))
    with pytest.raises(SystemExit, match="--model DIR is required"):
        train_sft.main(train_sft.SFTConfig())


def test_scaled_curriculum_keeps_each_stage_share():
    plans = [StagePlan(Stage(1.0, 1e-3, 1), [], n) for n in (10, 35, 9, 2)]
    # 20 x (10, 35, 9, 2) / 56 = 3.57, 12.5, 3.21, 0.71: floors 3, 12, 3, 0 and the 2 left go to the
    # largest remainders (0.71, then 0.57)
    assert [p.steps for p in scale_curriculum(plans, 20)] == [4, 12, 3, 1]
    assert [p.steps for p in scale_curriculum(plans, 112)] == [20, 70, 18, 4]  # stretched: exactly x2
    # 5 steps: 0.89, 3.12, 0.80, 0.18 -> 0, 3, 0, 0 + 2 -> 1, 3, 1, 0; the empty stage takes one from the largest
    assert [p.steps for p in scale_curriculum(plans, 5)] == [1, 2, 1, 1]
    with pytest.raises(ValueError, match="--steps 3 is fewer than the curriculum's 4 stages"):
        scale_curriculum(plans, 3)


def test_steps_scale_the_lr_schedule_of_every_stage(tmp_path, sft_setup, capsys):
    """Stages of 13 and 10 steps squeezed into --steps 20: 20 x 13/23 = 11.3, 20 x 10/23 = 8.7 -> 11 + 9 steps,
    each with its warmup (min(10, steps // 10): 1 and 0) and a cosine to 0.1 x its LR; --grad-clip 0 = no clipping."""
    torch.set_num_threads(1)
    base, data = sft_setup
    train_sft.main(sft_args(base, data, tmp_path / "s", "--stages", "0.5:3e-3:1,0.2:2e-3:2", "--score-column",
                            "score", "--steps", "20", "--samples", "0", "--eval-every", "1000", "--grad-clip", "0"))
    printed = capsys.readouterr().out
    assert "| 20 steps (the full curriculum, 23, scaled by --steps)" in printed
    assert "1 epochs, 13 steps -> 11 by --steps" in printed and "2 epochs, 10 steps -> 9 by --steps" in printed
    rows = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert sorted(lr) == list(range(1, 21)) and [r["stage"] for r in rows if "lr" in r] == [1] * 11 + [2] * 9
    # Hand computed: 3e-3 x (0.1 + 0.45 (1 + cos(pi (k - 1) / 10))) for step k = 1..10 of stage 1 after its
    # warmup step k = 0; 2e-3 x (0.1 + 0.45 (1 + cos(pi k / 9))) for k = 0..8 of stage 2.
    expected = {1: 3e-3, 2: 3e-3, 7: 1.65e-3, 11: 3.660737e-4, 12: 2e-3, 15: 1.55e-3, 20: 2.542766e-4}
    assert {k: lr[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert all(lr[k] >= lr[k + 1] for k in range(1, 11)) and all(lr[k] >= lr[k + 1] for k in range(12, 20))
    # --grad-clip 0 means no clipping (not a zero gradient): the weights moved
    before, after = load_file(str(base / "model.safetensors")), load_file(str(tmp_path / "s/final/model.safetensors"))
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, sft_setup, monkeypatch):
    torch.set_num_threads(1)
    base, data = sft_setup

    def nan_at_step_3(loss, step):
        return check_finite(torch.tensor(float("nan")) if step == 3 else loss, step)

    monkeypatch.setattr(train_sft, "check_finite", nan_at_step_3)
    with pytest.raises(SystemExit, match="loss is nan at step 3"):
        train_sft.main(sft_args(base, data, tmp_path / "nan", "--save-every", "2", "--samples", "0"))
    assert json.loads((tmp_path / "nan/checkpoint/trainer_state.json").read_text())["step"] == 2
    assert not (tmp_path / "nan/final").exists()


# LoRA without dropout: each process draws its own dropout masks, so with dropout the runs differ by design.
@pytest.mark.parametrize("lora", [(), ("--lora-rank", "4", "--lora-dropout", "0")], ids=["full", "lora"])
def test_two_process_ddp_matches_one_process(tmp_path, sft_setup, lora):
    base, data = sft_setup
    common = [str(REPO / "train_sft.py"), "--model", str(base), "--data", str(data), "--device", "cpu",
              "--dtype", "fp32", "--stages", "0.2:3e-3:1", "--score-column", "score", "--batch-size", "8",
              "--device-batch-size", "2", "--samples", "0", "--log-every", "1", "--eval-pairs", "8", *lora]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")],
                   env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547",
                    *common, "--out", str(tmp_path / "two")], env=env, check=True, capture_output=True)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in line] for run in ("one", "two")]
    assert len(losses[0]) == 5
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    # the exported weights too (LoRA: merged into final/, and the adapter alone)
    for path in ["final/model.safetensors"] + (["adapter/adapter_model.safetensors"] if lora else []):
        a, b = (load_file(str(tmp_path / run / path)) for run in ("one", "two"))
        assert a.keys() == b.keys()
        for k in a:  # one Adam step moves a weight by ~lr = 3e-3; summation order alone, by ~2e-5
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=f"{path}: {k}")
    assert not all(torch.equal(v, load_file(str(base / "model.safetensors"))[k])
                   for k, v in load_file(str(tmp_path / "two/final/model.safetensors")).items())
