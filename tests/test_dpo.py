"""DPO: the losses by hand, one-pass chosen+rejected log-probs against separate unpadded passes, the pairs
reader's bad input, and tiny end-to-end runs: the stored reference equals a reference model in the loop,
exact resume after a signal, two-process DDP equals one process."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_dpo
from minitoddler.checkpoint import load_model, save_model
from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.formats import render_exchange
from minitoddler.logprobs import token_logprobs
from minitoddler.model import ToddlerLM
from minitoddler.rl.dpo import dpo_loss, pair_logprobs, reply_logprobs
from minitoddler.rl.prefs import Pref, load_prefs, read_prefs, split_prefs
from minitoddler.sft import stage_batch
from minitoddler.tokenizer import load_tokenizer, train_tokenizer
from stop_after import stop_after

REPO = Path(__file__).resolve().parents[1]


def test_losses_match_hand_computation():
    # Pair 1: policy gains 1 nat on chosen and loses 1 on rejected vs the reference -> h = 2.
    # Pair 2: the other way round -> h = -1.
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -3.5]), torch.tensor([-2.0, -2.5])
    beta = 0.1
    sig, rw, rl = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert sig.tolist() == pytest.approx([math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.1))])
    assert rw.tolist() == pytest.approx([0.1, -0.05]) and rl.tolist() == pytest.approx([-0.1, 0.05])
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo")
    assert ipo.tolist() == pytest.approx([(2 - 5) ** 2, (-1 - 5) ** 2])
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta, "hinge")
    assert hinge.tolist() == pytest.approx([0.8, 1.1])
    assert dpo_loss(pc, pr, rc, rr, 0.5, "hinge")[0].tolist() == pytest.approx([0.0, 1.5])  # clipped at 0
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(pc, pr, rc, rr, beta, "kto")
    # IPO averages the reply tokens' log-probs; the others sum them (mask: the reply's tokens in the layout).
    lp = torch.tensor([[-2.0, -3.0, 0.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert reply_logprobs(lp, mask, "sigmoid").tolist() == [-5.0, -1.0]
    assert reply_logprobs(lp, mask, "ipo").tolist() == [-2.5, -0.5]


def real_prefs(shared_data, n):
    return json.loads((shared_data / "dpo" / "naturalistic_pairs.json").read_text())[:n]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    """A tokenizer trained on real pairs, a tiny random model, and 120 real DPO pairs in a JSON file."""
    d = tmp_path_factory.mktemp("dpo")
    rows = real_prefs(shared_data, 2000)
    train_tokenizer([r[k] for r in rows for k in ("prompt", "chosen", "rejected")], d / "tok", vocab_size=512)
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vocab_size = load_tokenizer(d / "tok").get_vocab_size()
    base = save_model(ToddlerLM(cfg), d / "base", tokenizer=d / "tok")
    data = d / "pairs.json"
    data.write_text(json.dumps(rows[:120], indent=2))
    return base, data


def test_one_pass_equals_separate_passes(setup):
    base, data = setup
    model, tok = load_model(base), load_tokenizer(base)
    prefs, _ = read_prefs(data)
    chosen = [render_exchange(tok, p.prompt, p.chosen, "dialogue", None, 0) for p in prefs[:6]]
    rejected = [render_exchange(tok, p.prompt, p.rejected, "dialogue", None, 0) for p in prefs[:6]]
    with torch.no_grad():
        c, r = pair_logprobs(model, chosen, rejected, "sigmoid", chunk_size=5)

        def alone(ids, mask):  # one sequence, no padding, no chunking
            lp = token_logprobs(model, torch.tensor([ids]))[0]
            return float((lp * torch.tensor(mask[1:])).sum())
        assert c.tolist() == pytest.approx([alone(*x) for x in chosen], abs=1e-4)
        assert r.tolist() == pytest.approx([alone(*x) for x in rejected], abs=1e-4)
    # The reply mask covers " reply\n" of "*MOT: prompt\n*CHI: reply\n" only.
    ids, mask = chosen[0]
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == f" {prefs[0].chosen}\n"
    # Gradients flow through the single pass.
    c, r = pair_logprobs(model, chosen[:2], rejected[:2], "sigmoid")
    (c - r).sum().backward()
    assert model.embed_tokens.weight.grad.abs().sum() > 0


def test_pairs_reader_skips_empty_and_identical_and_names_lines(tmp_path, capsys):
    rows = [{"prompt": "*MOT: what is that ?", "chosen": "*CHI: a dog .", "rejected": "*CHI: my shoe ."},
            {"prompt": "hi", "chosen": "*CHI:  ", "rejected": "no"},
            {"prompt": "hi", "chosen": "*CHI: same .", "rejected": "same ."},
            {"prompt": "where ?", "chosen": "there", "rejected": "here"}]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(rows, indent=2))
    prefs, skipped = read_prefs(p)
    assert [(x.prompt, x.chosen, x.rejected) for x in prefs] == [("what is that ?", "a dog .", "my shoe ."),
                                                                ("where ?", "there", "here")]
    lines = p.read_text().splitlines()
    assert skipped == [f"{p}:{i + 1}" for i, line in enumerate(lines) if line.strip() == "{"][1:3]
    assert f"skipped 2 pairs of {p}" in capsys.readouterr().err
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]) + '{"prompt": "x", "chosen": 3}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected an object with string fields"):
        read_prefs(jl)
    jl.write_text('{"prompt": "x",\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: not valid JSON"):
        read_prefs(jl)
    with pytest.raises(FileNotFoundError, match="prefs/ directory"):
        read_prefs(tmp_path / "missing.json")
    train, val = split_prefs(prefs * 10, 0.1, 0)
    assert len(train) == 18 and len(val) == 2
    # prepare's prefs/ directory: train.jsonl + val.jsonl as written.
    (tmp_path / "prefs").mkdir()
    for split in ("train", "val"):
        (tmp_path / "prefs" / f"{split}.jsonl").write_text(json.dumps(rows[0]) + "\n")
    tr, va, n = load_prefs(tmp_path, 0.5, 0)
    assert len(tr) == len(va) == 1 and n == 0


def test_long_prompt_is_shortened_from_the_left(setup):
    base, _ = setup
    tok = load_tokenizer(base)
    prefs = [Pref(" ".join(["the big red ball"] * 20), "ball !", "no .", "test:1")]
    ids, mask = render_exchange(tok, prefs[0].prompt, prefs[0].chosen, "dialogue", None, 0)
    ex, shortened, too_long = train_dpo.encode_pairs(tok, prefs, "dialogue", None, 0, 24)
    assert shortened == 1 and not too_long
    assert ex[0].chosen == (ids[-24:], mask[-24:]) and sum(ex[0].chosen[1]) == sum(mask)
    ex, shortened, too_long = train_dpo.encode_pairs(tok, prefs, "dialogue", None, 0, 3)
    assert ex == [] and too_long == ["test:1"]


def dpo_args(base, data, out, *extra):
    return parse_config(train_dpo.DPOConfig, argv=[
        "--model", str(base), "--data", str(data), "--out", str(out), "--device", "cpu", "--batch-size", "8",
        "--device-batch-size", "4", "--lr", "2e-3", "--val-fraction", "0.1", "--eval-every", "3",
        "--log-every", "1", "--dtype", "fp32", *extra])


def test_stored_reference_equals_reference_model_in_the_loop(setup, tmp_path, capsys):
    """main() (reference log-probs precomputed once, batched and stored) vs a naive loop that keeps a
    frozen copy of the initial model and scores every pair alone, unpadded, at every step."""
    torch.set_num_threads(1)
    base, data = setup
    final = train_dpo.main(dpo_args(base, data, tmp_path / "run", "--steps", "3"))
    assert (tmp_path / "run" / train_dpo.REFERENCE_FILE).is_file()

    tok, policy = load_tokenizer(base), load_model(base)
    reference = copy.deepcopy(policy).requires_grad_(False)
    train, _ = split_prefs(read_prefs(data)[0], 0.1, 1337)
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=0.0)

    def logp(model, prompt, reply):
        ids, mask = render_exchange(tok, prompt, reply, "dialogue", None, 0)
        return (token_logprobs(model, torch.tensor([ids]))[0] * torch.tensor(mask[1:])).sum()

    for step in range(3):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (3 - step) / 3  # linear decay to 0, no warmup
        loss = 0
        for p in stage_batch(train, 0, step, 8, 1337):
            with torch.no_grad():
                ref = logp(reference, p.prompt, p.chosen) - logp(reference, p.prompt, p.rejected)
            h = logp(policy, p.prompt, p.chosen) - logp(policy, p.prompt, p.rejected) - ref
            loss = loss - torch.nn.functional.logsigmoid(0.1 * h) / 8
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    ours = load_file(str(final / "model.safetensors"))
    naive = {f"model.{k}": v for k, v in policy.state_dict().items() if k != "lm_head.weight"}
    start = load_file(str(base / "model.safetensors"))
    assert set(ours) == set(naive)
    assert max((ours[k] - start[k]).abs().max() for k in ours) > 1e-3  # training moved the weights
    assert all(torch.allclose(ours[k], naive[k], atol=2e-5) for k in ours)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 0 and metrics[0]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["val/margin"] == 0 and metrics[0]["val/accuracy"] == 0  # before training: exact ties
    assert metrics[1]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1: the policy is the reference
    assert {"loss", "margin", "accuracy", "lr"} <= set(metrics[1]) and "val/accuracy" in metrics[-1]
    capsys.readouterr()


def test_resume_after_a_signal_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    base, data = setup
    lora = ("--lora-rank", "4", "--lora-dropout", "0.1", "--loss", "ipo", "--steps", "6")
    whole = train_dpo.main(dpo_args(base, data, tmp_path / "whole", *lora))
    with monkeypatch.context() as m:
        m.setattr(train_dpo, "StopFlag", stop_after(3))  # Ctrl-C during the third step
        stopped = train_dpo.main(dpo_args(base, data, tmp_path / "split", *lora))
    assert json.loads((stopped / "trainer_state.json").read_text())["step"] == 3
    assert "resume with --resume" in capsys.readouterr().out
    resumed = train_dpo.main(dpo_args(base, data, tmp_path / "split", *lora, "--resume"))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert set(a) == set(load_file(str(base / "model.safetensors")))  # LoRA merged: plain HF layout
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "adapter" / "adapter_model.safetensors").is_file()
    rows = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows("whole") if "loss" in r] == [r["loss"] for r in rows("split") if "loss" in r]

    with pytest.raises(ValueError, match="settings differ .* loss: was ipo, now sigmoid"):
        train_dpo.main(dpo_args(base, data, tmp_path / "split", *lora[:-4], "--steps", "6", "--resume"))
    (tmp_path / "split" / train_dpo.REFERENCE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="reference_logprobs.safetensors is missing"):
        train_dpo.main(dpo_args(base, data, tmp_path / "split", *lora, "--resume"))
    with pytest.raises(SystemExit, match="--model DIR is required"):
        train_dpo.main(train_dpo.DPOConfig())


def test_two_process_ddp_matches_one_process(setup, tmp_path):
    base, data = setup
    common = ["--model", str(base), "--data", str(data), "--device", "cpu", "--batch-size", "8",
              "--device-batch-size", "2", "--steps", "3", "--lr", "2e-3", "--eval-every", "3", "--dtype", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "train_dpo.py"), *common, "--out", str(tmp_path / "one")],
                   env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
                    str(REPO / "train_dpo.py"), *common, "--out", str(tmp_path / "two")],
                   env=env, check=True, capture_output=True)
    rows = {run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("one", "two")}
    for key in ("loss", "val/loss", "val/accuracy"):
        one, two = ([r[key] for r in rows[run] if key in r] for run in ("one", "two"))
        assert len(one) >= 2 and one == pytest.approx(two, abs=1e-4)
    ref = [load_file(str(tmp_path / run / train_dpo.REFERENCE_FILE)) for run in ("one", "two")]
    assert all(torch.allclose(ref[0][k], ref[1][k], atol=1e-4) for k in ref[0])


def test_chatml_format_masks_the_assistant_reply(setup):
    base, _ = setup
    tok = load_tokenizer(base)
    prefs = [Pref("what is that ?", "a dog .", "my shoe .", "test:1")]
    ex, shortened, too_long = train_dpo.encode_pairs(tok, prefs, "chatml", "Be a child.", None, 256)
    ids, mask = ex[0].chosen
    assert tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False) == "a dog .<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=False).startswith("<|im_start|>system\nbe a child.<|im_end|>")  # lower-cased
    assert "caregiver: what is that ?" in tok.decode(ids, skip_special_tokens=False)
