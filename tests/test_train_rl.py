"""train_rl.py end to end on a tiny model: GRPO and PPO steps change only what they should, metrics rows,
exported final/ + adapter/, exact resume, bad input, and the length reward rising under GRPO."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_rl
from minitoddler.checkpoint import load_model, save_model
from minitoddler.config import preset
from minitoddler.lora import load_adapter
from minitoddler.model import ToddlerLM
from minitoddler.rewards.length import LengthModel
from minitoddler.startup import bundled_data
from minitoddler.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny model with a tokenizer trained on the bundled pairs, the pairs, and a length fit."""
    root = tmp_path_factory.mktemp("rl")
    pairs = bundled_data(root / "data", "pairs")
    rows = [json.loads(line) for line in (pairs / "train.jsonl").read_text().splitlines()]
    tok_dir = root / "tok"
    train_tokenizer([t for r in rows for t in (r["prompt"], r["response"])], tok_dir, vocab_size=400)
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vocab_size = 400
    model_dir = save_model(ToddlerLM(cfg), root / "model", tokenizer=tok_dir)
    fit = LengthModel.fit([len(r["response"].split()) for r in rows], "pmf").save(root / "length.json")
    return {"root": root, "pairs": pairs, "model": model_dir, "length": fit}


def rl_config(setup, out, algo="grpo", **kw):
    base = dict(algo=algo, model=str(setup["model"]), data=str(setup["pairs"]), out=str(out), steps=2,
                batch_prompts=2, generations=2, max_new_tokens=8, max_prompt_len=48, lora_rank=4,
                device="cpu", eval_prompts=0, sample_every=0, save_every=1, device_batch_size=4,
                mini_batch_size=2, ppo_epochs=2)
    base.update(kw)
    return train_rl.rl_config(**base)


def run(setup, cfg):
    return train_rl.main(cfg, "length", {"length_fit": str(setup["length"])})


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_one_run_trains_only_lora_and_exports(setup, tmp_path, algo):
    out = tmp_path / algo
    final = run(setup, rl_config(setup, out, algo, lr=1e-2))
    base = load_file(str(setup["model"] / "model.safetensors"))
    merged = load_file(str(final / "model.safetensors"))
    ckpt = load_file(str(out / "checkpoint" / "model.safetensors"))
    lora_keys = [k for k in ckpt if "lora_" in k]
    assert lora_keys and all(k.endswith(("lora_A", "lora_B")) for k in lora_keys)
    for k, v in base.items():  # LoRA only: every base tensor in the checkpoint is untouched
        assert torch.equal(ckpt[k], v), k
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # ...but the merged model moved
    # final/ = base + adapter/, loaded back
    reloaded = load_model(setup["model"])
    load_adapter(reloaded, out / "adapter")
    ids = torch.randint(4, 400, (2, 10))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids), load_model(final)(ids), atol=1e-5)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/total", "reward/length", "kl", "clip_frac", "completion_len", "entropy", "lr",
                "step_time"):
        assert all(key in r for r in rows), key
    assert ("zero_std_frac" in rows[0]) == (algo == "grpo")
    if algo == "ppo":
        head = load_file(str(out / "checkpoint" / "extra.safetensors"))
        assert set(head) == {"value_head.summary.weight", "value_head.summary.bias"}


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_equals_uninterrupted(setup, tmp_path, algo):
    whole = run(setup, rl_config(setup, tmp_path / "whole", algo, steps=3, lr=1e-2))
    # Stop the same 3-step run after step 2, as Ctrl-C would (the loop reads the flag once per step).
    cfg = rl_config(setup, tmp_path / "cut", algo, steps=3, lr=1e-2)
    original = train_rl.StopFlag

    class StopAfterTwo(original):
        reads = 0

        @property
        def requested(self):
            self.reads += 1
            return self.reads >= 2

        @requested.setter
        def requested(self, value):
            pass

    train_rl.StopFlag = StopAfterTwo
    try:
        run(setup, cfg)
    finally:
        train_rl.StopFlag = original
    assert json.loads((tmp_path / "cut" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    resumed = run(setup, rl_config(setup, tmp_path / "cut", algo, steps=3, lr=1e-2, resume=True))
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "whole")[-1]["reward/total"] == rows(tmp_path / "cut")[-1]["reward/total"]


def test_closing_line_counts_the_steps_of_this_run(setup, tmp_path, capsys):
    """"done: N steps" counts the steps this run trained: all of them, or those after the resumed step."""
    run(setup, rl_config(setup, tmp_path, steps=2))
    assert "done: 2 steps in" in capsys.readouterr().out
    run(setup, rl_config(setup, tmp_path, steps=3, resume=True))
    assert "done: 1 steps in" in capsys.readouterr().out


def test_bad_input_says_what_to_do(setup, tmp_path):
    with pytest.raises(SystemExit, match="--model DIR is required"):
        run(setup, rl_config(setup, tmp_path, model=str(tmp_path / "nope")))
    with pytest.raises(SystemExit, match="its own flags"):
        run(setup, rl_config(setup, tmp_path, algo="dpo"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(setup, rl_config(setup, tmp_path / "fresh", resume=True))
    with pytest.raises(ValueError, match="context"):
        run(setup, rl_config(setup, tmp_path / "long", max_prompt_len=200, max_new_tokens=100))


def test_prompts_that_do_not_split_over_the_processes_are_refused(setup, tmp_path, monkeypatch):
    """25 prompts on 8 processes used to train on 24 (25 // 8 each), silently."""
    from minitoddler.distributed import Dist
    monkeypatch.setattr(train_rl, "start_run", lambda device, out, seed: (Dist(0, 0, 8), torch.device("cpu"),
                                                                         Path(out)))
    with pytest.raises(ValueError, match="--batch-prompts 25 must be a multiple of the 8 processes"):
        run(setup, rl_config(setup, tmp_path, batch_prompts=25))


def test_command_line_runs_grpo_and_writes_final(setup, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "train_rl.py", "--algo", "grpo", "--model", str(setup["model"]), "--data",
           str(setup["pairs"]), "--out", str(out), "--steps", "1", "--batch-prompts", "2", "--generations", "2",
           "--max-new-tokens", "6", "--lora-rank", "2", "--device", "cpu", "--eval-prompts", "2",
           "--reward", "length", "--length-fit", str(setup["length"])]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "final" / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert "before training" in res.stdout and "after training" in res.stdout


class VowelReward:
    """A reward the test can compute: the share of letters of the reply that are 'e'."""

    def score(self, prompts, replies):
        share = [sum(c == "e" for c in r) / max(1, sum(c.isalpha() for c in r)) for r in replies]
        return torch.tensor(share)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_reward_rises(setup, tmp_path, monkeypatch, algo):
    """On a random tiny model a reward that depends only on which tokens are sampled must rise."""
    from minitoddler.rewards.combine import CombinedReward
    monkeypatch.setattr(train_rl, "build_reward", lambda spec, options: CombinedReward([("e", 1.0, VowelReward())]))
    extra = dict(mini_batch_size=8, ppo_epochs=4, init_kl_coef=0.0, kl_horizon=0) if algo == "ppo" else {}
    # Full fine-tuning (the frozen-copy reference): LoRA on a random 0.1M model moves its outputs too slowly.
    # fp32 whatever the CPU (--dtype auto picks bf16 where it is native), and enough GRPO steps that the rise
    # does not hang on one seed's first steps (12 were too few for seed 1337 in fp32).
    cfg = rl_config(setup, tmp_path, algo, steps=20 if algo == "grpo" else 8, batch_prompts=4, generations=8,
                    max_new_tokens=8, lr=1e-2, lora_rank=0, save_every=0, device_batch_size=32, dtype="fp32", **extra)
    train_rl.main(cfg, "e", {})
    rewards = [json.loads(x)["reward/total"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.05, rewards


def test_settings_measured_not_to_learn_are_warned_up_front(setup, tmp_path, capsys):
    """Issue 24's run (tiny, LoRA by default, PPO at mini-batch 1 and --lr 1e-3 over 8 x 8 rollouts) hardly moved
    the reward; its two causes are named before training, each with what to use instead (docs/rl.md), and the
    documented examples and trl's defaults get no warning."""
    tiny = ToddlerLM(preset("tiny"))  # vocabulary 8192: the (tied) embeddings are 85% of the parameters
    issue = train_rl.setting_warnings(train_rl.rl_config("ppo", batch_prompts=8, generations=8, lr=1e-3), tiny)
    assert len(issue) == 2, issue
    assert "85% of this model's parameters" in issue[0] and issue[0].endswith("use --lora-rank 0")
    assert "256 optimizer steps per rollout (4 epochs x 64 rows / --mini-batch-size 1) at --lr 0.001" in issue[1]
    assert issue[1].endswith("use --mini-batch-size 8 --lr 0.0005 or lower")
    for algo, kw in [("ppo", dict(batch_prompts=32, mini_batch_size=8, lr=1e-3, lora_rank=0)),  # the examples
                     ("grpo", dict(batch_prompts=4, generations=8, lr=3e-3, lora_rank=0)),
                     ("ppo", dict(lora_rank=0))]:                                           # trl's defaults
        assert train_rl.setting_warnings(train_rl.rl_config(algo, **kw), tiny) == [], (algo, kw)
    # LoRA where the embeddings are a small share (the fixture's vocabulary of 400: 22%) is not warned about
    assert train_rl.setting_warnings(train_rl.rl_config("grpo"), load_model(setup["model"])) == []
    # 2 epochs x 4 rows / mini-batch 1 = 8 steps at --lr 1e-2: 0.08 > 0.05; printed before the first step
    run(setup, rl_config(setup, tmp_path, "ppo", steps=1, mini_batch_size=1, lr=1e-2, save_every=0))
    out = capsys.readouterr().out
    assert "warning: LoRA" not in out
    assert out.index("warning: PPO takes 8 optimizer steps per rollout") < out.index("done: 1 steps")


def test_grpo_on_a_smollm2_directory_written_by_transformers(setup, tmp_path, capsys):
    """SmolLM2-360M-Instruct's config (2 of its 32 layers, to stay fast) with random weights, as transformers
    writes it, and a ChatML tokenizer with SmolLM2's special ids (<|endoftext|> 0, <|im_start|> 1,
    <|im_end|> 2, no <|pad|>): GRPO runs with the model's own chat tokens and exports a directory
    transformers loads with the same logits."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    smol = tmp_path / "smol"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rows = [json.loads(x) for x in (setup["pairs"] / "train.jsonl").read_text().splitlines()]
    tok.train_from_iterator([t for r in rows for t in (r["prompt"], r["response"])],
                            trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                                "<|im_end|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    smol.mkdir()
    tok.save(str(smol / "tokenizer.json"))
    template = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
    (smol / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    hf_cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=2,
                                      num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(hf_cfg).save_pretrained(smol, safe_serialization=True)
    out = tmp_path / "run"
    final = run(setup, rl_config({**setup, "model": smol}, out, steps=1, generations=2, max_new_tokens=4,
                                 lora_rank=2, lr=1e-2, system_prompt="You are a 2-3-year-old child."))
    assert "not a chat model yet" not in capsys.readouterr().out  # SmolLM2 already has ChatML: nothing added
    ours = load_model(final)
    assert (ours.cfg.num_key_value_heads, ours.cfg.vocab_size, ours.cfg.rope_theta) == (5, 49152, 100000.0)
    theirs = transformers.LlamaForCausalLM.from_pretrained(final).eval()
    ids = torch.randint(3, 600, (1, 9))
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)
