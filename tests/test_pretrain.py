"""Pretraining: learns, resumes bit-exactly, keeps the last good checkpoint on a NaN, and DDP with 2
processes follows the 1-process loss curve."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from safetensors.torch import load_file

import train_pretrain
from minitoddler.config import preset
from minitoddler.data.shards import default_shards
from minitoddler.distributed import plan_batch
from minitoddler.model import ToddlerLM
from minitoddler.trainer import NonFiniteLoss, check_finite, lr_at, make_optimizer, set_lr
from stop_after import stop_after

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return default_shards(tmp_path_factory.mktemp("bundled"), kind="cds")


def small_run(shards, out, **kw):
    cfg = dict(model="tiny", data=str(shards), out=str(out), steps=6, batch_tokens=512, device_batch_size=4,
               seq_len=64, lr=3e-3, warmup_steps=2, eval_every=3, eval_batches=2, save_every=100,
               log_every=1, device="cpu", seed=7)
    cfg.update(kw)
    return train_pretrain.PretrainConfig(**cfg)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = ToddlerLM(preset("tiny"))
    opt = make_optimizer(model, lr=3e-3, weight_decay=0.0)
    x = torch.randint(3, 8192, (4, 33))
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, 8192), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 8.5           # ~ln(8192) = 9.01 at init
    assert losses[-1] < 0.5          # memorised


def test_lr_schedule_by_hand():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, min_ratio=0.0) == pytest.approx(0.5)     # half-way through the cosine
    assert lr_at(100, 100, 1.0, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(79, 100, 1.0, 10, schedule="wsd") == 1.0
    assert lr_at(90, 100, 1.0, 10, schedule="wsd", min_ratio=0.0) == pytest.approx(0.5)


def test_non_finite_loss_is_an_error():
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 4"):
        check_finite(torch.tensor(float("nan")), 4)


def test_run_learns_and_exports(shards, tmp_path):
    cfg = small_run(shards, tmp_path / "run", steps=12, eval_every=12)
    final = train_pretrain.main(cfg)
    rows = metrics(cfg.out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0
    assert any("val_bpb" in r for r in rows)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (final / name).is_file()


def test_interrupted_and_resumed_equals_uninterrupted(shards, tmp_path, monkeypatch):
    straight = small_run(shards, tmp_path / "straight")
    train_pretrain.main(straight)

    interrupted = small_run(shards, tmp_path / "resumed")
    monkeypatch.setattr(train_pretrain, "StopFlag", stop_after(2))  # stop after step 2 of 6
    train_pretrain.main(interrupted)
    state = json.loads((tmp_path / "resumed/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2
    monkeypatch.undo()
    train_pretrain.main(dataclasses.replace(interrupted, resume=True))

    a = load_file(str(tmp_path / "straight/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/final/model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss_a = [r["loss"] for r in metrics(straight.out) if "loss" in r]
    loss_b = [r["loss"] for r in metrics(interrupted.out) if "loss" in r]
    assert loss_a == loss_b


def test_nan_stops_and_keeps_last_good_checkpoint(shards, tmp_path, monkeypatch):
    cfg = small_run(shards, tmp_path / "nan", save_every=2)

    def nan_at_step_3(loss, step):
        return check_finite(torch.tensor(float("nan")) if step == 3 else loss, step)

    monkeypatch.setattr(train_pretrain, "check_finite", nan_at_step_3)
    with pytest.raises(SystemExit, match="loss is nan at step 3"):
        train_pretrain.main(cfg)
    state = json.loads((tmp_path / "nan/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2
    assert not (tmp_path / "nan/final").exists()


def test_nan_gradient_stops_before_the_optimizer_step(shards, tmp_path, monkeypatch):
    """A finite loss with a NaN gradient (as a bad kernel or an overflow in backward gives) must not reach
    AdamW: the run stops naming the step, and the last good checkpoint holds finite weights."""
    cfg = small_run(shards, tmp_path / "nangrad", save_every=2)
    steps_begun = []
    monkeypatch.setattr(train_pretrain, "set_lr", lambda opt, lr: steps_begun.append(lr) or set_lr(opt, lr))
    real_load = train_pretrain.model_from_arg

    def load_with_hook(*args, **kwargs):
        model = real_load(*args, **kwargs)
        model.embed_tokens.weight.register_hook(lambda g: g * float("nan") if len(steps_begun) == 4 else g)
        return model

    monkeypatch.setattr(train_pretrain, "model_from_arg", load_with_hook)
    with pytest.raises(SystemExit, match="gradient norm is nan at step 3; stopping before the optimizer step"):
        train_pretrain.main(cfg)
    state = json.loads((tmp_path / "nangrad/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2
    weights = load_file(str(tmp_path / "nangrad/checkpoint/model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_two_process_ddp_matches_one_process(shards, tmp_path):
    common = ["--model", "tiny", "--data", str(shards), "--steps", "4", "--batch-tokens", "512",
              "--device-batch-size", "4", "--seq-len", "64", "--warmup-steps", "1", "--eval-every", "4",
              "--eval-batches", "1", "--log-every", "1", "--device", "cpu", "--dtype", "fp32", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "train_pretrain.py", *common, "--out", str(tmp_path / "one")],
                   cwd=REPO, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    "train_pretrain.py", *common, "--out", str(tmp_path / "two")],
                   cwd=REPO, env=env, check=True, capture_output=True)
    one = [r["loss"] for r in metrics(tmp_path / "one") if "loss" in r]
    two = [r["loss"] for r in metrics(tmp_path / "two") if "loss" in r]
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, abs=1e-4)
    assert one[-1] < one[0]
    # and the weights they end with (rank 0 exports; the other rank's copy is the same by DDP's all-reduce)
    a, b = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:  # an Adam step moves a weight by ~lr = 3e-3; summation order alone, by ~2e-5
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8, 9])
def test_default_global_batch_splits_over_any_usual_world_size(world):
    """36,864 tokens of 256 = 144 sequences: device batch at most 16, accumulation makes up the rest, and
    device x accumulation x processes x 256 is exactly the global batch (worlds 2, 4, 8 used to refuse)."""
    device, accum = plan_batch(36864, 16, 256, world)
    assert device <= 16 and device * accum * world * 256 == 36864
    assert device == {1: 16, 2: 12, 3: 16, 4: 12, 8: 9, 9: 16}[world]  # the largest that divides 144 / world


def test_a_global_batch_that_cannot_split_names_what_works():
    with pytest.raises(ValueError, match=r"--batch-tokens 36864 .* 5 processes: use a multiple of 1280 tokens "
                                         r"\(e.g. 37120\), or 1/2/3/4/6/8/9/12/16 processes"):
        plan_batch(36864, 16, 256, 5)


@pytest.mark.parametrize("world", [2, 4])
def test_torchrun_starts_pretraining_with_the_default_global_batch(shards, tmp_path, world):
    out = tmp_path / f"w{world}"
    args = ["--model", "tiny", "--data", str(shards), "--steps", "1", "--eval-batches", "1", "--device", "cpu",
            "--dtype", "fp32", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                           "--standalone", "train_pretrain.py", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"36864 tokens/step = {world} proc x" in done.stdout
    assert (out / "final" / "model.safetensors").is_file()
    rows = metrics(out)
    peak, step = rows[0]["peak_flops"], next(r for r in rows if "mfu" in r)
    flops_per_token = ToddlerLM(preset("tiny")).flops_per_token(256)  # MFU: the global FLOPs over every
    assert step["mfu"] == pytest.approx(step["tok_s"] * flops_per_token / (peak * world), rel=1e-6)  # process' peak


def test_compile_is_on_by_default_on_cuda_and_traces_the_step_with_its_loss():
    """--compile auto: on for CUDA (an eager step is launch-bound there), off on the CPU; `--compile` alone
    means on. The compiled unit is the forward pass and the loss together, in one graph."""
    from minitoddler.cli import parse_config
    from minitoddler.distributed import compile_on
    assert compile_on("auto", torch.device("cuda")) and not compile_on("auto", torch.device("cpu"))
    assert compile_on("on", "cpu") and not compile_on("off", "cuda")
    with pytest.raises(ValueError, match="--compile must be auto, on or off"):
        compile_on("yes", "cpu")
    flags = lambda *a: parse_config(train_pretrain.PretrainConfig, argv=list(a)).compile  # noqa: E731
    assert (flags(), flags("--compile"), flags("--compile", "off")) == ("auto", "on", "off")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ToddlerLM(dataclasses.replace(preset("tiny"), num_hidden_layers=1, vocab_size=256))
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    fp32 = train_pretrain.resolve_dtype("fp32", "cpu")
    step = torch.compile(train_pretrain.next_token_loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(step(model, x, y, fp32), train_pretrain.next_token_loss(model, x, y, fp32))
    torch._dynamo.reset()


def test_profile_writes_a_trace_and_report_to_mirrors_the_metrics(shards, tmp_path, monkeypatch):
    """--profile 3 leaves a Chrome trace of step 3; --report-to tensorboard sends every numeric metric of
    metrics.jsonl to a SummaryWriter (a stand-in here: the package is optional); a missing tracker package
    is a one-line error saying what to install."""
    import sys
    import types
    scalars = []

    class Writer:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, name, value, step):
            scalars.append((name, value, step))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    cfg = small_run(shards, tmp_path / "traced", steps=3, profile=3, report_to="tensorboard")
    train_pretrain.main(cfg)  # steps count from 1: the last of three is step 3
    trace = json.loads((tmp_path / "traced" / "trace_step3.json").read_text())
    assert trace["traceEvents"] and [p.name for p in (tmp_path / "traced").glob("trace_*")] == ["trace_step3.json"]
    losses = [(r["step"], r["loss"]) for r in metrics(tmp_path / "traced") if "loss" in r]
    assert [(s, v) for name, v, s in scalars if name == "loss"] == losses and len(losses) == 3
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(SystemExit, match="--report-to wandb needs the wandb package .*pip install wandb"):
        train_pretrain.main(small_run(shards, tmp_path / "wandb", report_to="wandb"))
