"""The loop skeleton every training script shares: cadence, progress lines, resume with its checks,
extra tensors in checkpoints, the non-finite guard."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minitoddler.config import preset
from minitoddler.model import ToddlerLM
from minitoddler.startup import start_run
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import NonFiniteLoss, check_finite, due, make_optimizer, progress_line, stop_on_nonfinite

REPO = Path(__file__).resolve().parents[1]


def test_due_every_n_and_at_the_end():
    assert [d for d in range(1, 11) if due(d, 3, 10)] == [3, 6, 9, 10]
    assert [d for d in range(1, 7) if due(d, 2, 6)] == [2, 4, 6]
    assert [d for d in range(1, 6) if due(d, 0, 5)] == [5]      # 0: only at the end
    assert [d for d in range(1, 6) if due(d, -1, 5)] == [5]


def test_progress_line_by_hand():
    line = progress_line(10, 300, 5.2, 0.52, loss=3.12344, lr=1e-3, stage=2, mfu="12.5%")
    # ETA = 290 steps x 0.52 s = 150.8 s -> 2m31s
    assert line == "step 10/300 loss 3.1234 lr 1.00e-03 stage 2 mfu 12.5% | 0.52 s/step | elapsed 5s | ETA 2m31s"
    assert progress_line(300, 300, 4000, 13.3).endswith("| elapsed 1h06m | ETA 0s")
    assert "tok_s 12,346" in progress_line(1, 2, 1, 1, tok_s=12345.6)


def tiny_model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny")
    cfg.vocab_size, cfg.num_hidden_layers = 64, 1
    model = ToddlerLM(cfg)
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.0)
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()  # the optimizer now has state to save
    opt.zero_grad()
    return model, opt


def test_adamw_takes_the_fused_kernel_on_cpu_and_decays_matrices_only():
    """One pass over each tensor on the CPU too (0.3 s instead of 0.7 s per toddler-155m step)."""
    opt = make_optimizer(ToddlerLM(preset("tiny")), 1e-3, 0.1, device=torch.device("cpu"))
    assert all(g["fused"] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    decayed, not_decayed = (g["params"] for g in opt.param_groups)
    assert all(p.ndim >= 2 for p in decayed) and all(p.ndim < 2 for p in not_decayed)


def test_resume_restores_model_optimizer_rng_and_extra_tensors(tmp_path, capsys):
    ddp, device, out = start_run("cpu", tmp_path / "run", seed=5)
    assert out.is_dir() and device.type == "cpu" and ddp.is_main
    model, opt = tiny_model_and_optimizer()
    value_head = {"value_head.weight": torch.randn(3, 4)}
    save_checkpoint(out / "checkpoint", model, opt, 7, {"setup": {"lr": 1, "rank": 4}, "kl": {"coef": 0.2}},
                    extra_tensors=value_head)
    expected_draw = torch.rand(3)

    other, other_opt = tiny_model_and_optimizer(seed=1)
    state = resume_checkpoint(out / "checkpoint", other, other_opt, setup={"lr": 1, "rank": 4})
    assert "resumed from" in capsys.readouterr().out and state["step"] == 7 and state["kl"] == {"coef": 0.2}
    assert torch.equal(state["tensors"]["value_head.weight"], value_head["value_head.weight"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored to the save's moment

    # Without extra tensors the state still has the key; a crash between the two renames leaves .old.
    save_checkpoint(out / "ck2", model, opt, 3, {})
    (out / "ck2").rename(out / "ck2.old")
    assert resume_checkpoint(out / "ck2", other, other_opt, is_main=False)["tensors"] == {}


def test_resume_errors_name_the_problem(tmp_path):
    model, opt = tiny_model_and_optimizer()
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint in .*nothing.*without --resume"):
        resume_checkpoint(tmp_path / "nothing", model, opt)
    save_checkpoint(tmp_path / "ck", model, opt, 2, {"setup": {"lr": 1, "rank": 4, "data": "a"}})
    with pytest.raises(ValueError, match=r"differ .*: lr: was 1, now 2; rank: was 4, now 8$"):
        resume_checkpoint(tmp_path / "ck", model, opt, setup={"lr": 2, "rank": 8, "data": "a"})
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["step"] == 2  # a refused resume leaves the checkpoint alone


def test_stop_on_nonfinite_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r"error: loss is nan at step 3.*Last good checkpoint: none yet"):
        with stop_on_nonfinite(tmp_path / "checkpoint"):
            check_finite(torch.tensor(float("nan")), 3)
    model, opt = tiny_model_and_optimizer()
    save_checkpoint(tmp_path / "checkpoint", model, opt, 2, {})
    with pytest.raises(SystemExit, match=r"Last good checkpoint: .*checkpoint$"):
        with stop_on_nonfinite(tmp_path / "checkpoint"):
            raise NonFiniteLoss("loss is inf at step 4.")
    with stop_on_nonfinite(tmp_path / "checkpoint"):  # other errors and normal exits pass through
        pass
    with pytest.raises(KeyError):
        with stop_on_nonfinite(tmp_path / "checkpoint"):
            raise KeyError("x")


def torchrun_two(script, log_dir, *args):
    """Run `script` as two gloo processes under torchrun; on failure, show what each process itself wrote
    (torchrun's own summary names only the signal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "--log-dir", str(log_dir), "--redirects", "3", str(script), *args],
                          env=env, capture_output=True, text=True, timeout=120)
    own = "".join(f"\n--- {f.relative_to(log_dir)}:\n{f.read_text()[-1500:]}"
                  for f in sorted(log_dir.rglob("std*.log")) if f.stat().st_size)
    assert done.returncode == 0, done.stderr[-1000:] + own


DDP_SCRIPT = '''
import os, signal, sys, torch
sys.path.insert(0, {repo!r})
from minitoddler.distributed import init_distributed
from minitoddler.startup import end_run
from minitoddler.trainer import Progress, StopFlag, check_finite, NonFiniteLoss, save_or_stop
ddp, _ = init_distributed("cpu")
stop = StopFlag()
if ddp.rank == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # only this process is signalled
saved = []
ending = save_or_stop(3, 10, 0, stop, saved.append, Progress(10, 0, False), False, "out")
try:
    check_finite(torch.tensor(float("nan") if ddp.rank == 0 else 1.0), 3)
    finite = "finite"
except NonFiniteLoss as e:
    finite = str(e).split(";")[0]
# one file per rank: two processes printing to one pipe can interleave their lines
open(f"{out}/rank{{ddp.rank}}", "w").write(f"rank {{ddp.rank}}: ending {{ending}}, saved {{saved}}, {{finite}}")
end_run()
'''


def test_a_stop_or_a_nan_in_one_process_reaches_every_process(tmp_path):
    """Two gloo processes: SIGTERM in one makes both save and end at the same step; a NaN loss in one makes
    both stop (one process leaving alone would leave the other waiting in an all-reduce until a timeout)."""
    script = tmp_path / "ddp_stop.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    torchrun_two(script, tmp_path / "logs")
    lines = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    assert lines == ["rank 0: ending True, saved [3], loss is nan at step 3",
                     "rank 1: ending True, saved [3], loss is NaN/inf in another process at step 3"]


END_SCRIPT = '''
import sys, time
sys.path.insert(0, {repo!r})
from minitoddler.distributed import init_distributed
from minitoddler.startup import end_run
ddp, _ = init_distributed("cpu")
if ddp.rank == 0:
    time.sleep(1.5)  # the main process still writing its final model
    open(f"{out}/main_ends", "w").write(repr(time.time()))
end_run()
open(f"{out}/left{{ddp.rank}}", "w").write(repr(time.time()))
'''


def test_no_process_leaves_before_the_main_one_is_done(tmp_path):
    """end_run: every process waits for the others before leaving the process group (a process tearing
    gloo down while the main one still wrote its checkpoint aborted at exit in CI)."""
    script = tmp_path / "ddp_end.py"
    script.write_text(END_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    torchrun_two(script, tmp_path / "logs")
    main_ends = float((tmp_path / "main_ends").read_text())
    assert float((tmp_path / "left1").read_text()) >= main_ends


RNG_SCRIPT = '''
import sys, torch
sys.path.insert(0, {repo!r})
from minitoddler.config import preset
from minitoddler.distributed import init_distributed
from minitoddler.model import ToddlerLM
from minitoddler.startup import end_run
from minitoddler.train_state import load_checkpoint, save_checkpoint
from minitoddler.trainer import make_optimizer
ddp, _ = init_distributed("cpu")
model = ToddlerLM(preset("tiny"))
opt = make_optimizer(model, 1e-3, 0.0)
if sys.argv[1] == "save":
    torch.manual_seed(100 + ddp.rank)
    save_checkpoint({ckpt!r}, model, opt, 1, {{}})
else:
    load_checkpoint({ckpt!r}, model, opt)
# one file per rank: two processes printing to one pipe can interleave their lines
open(f"{out}/{{sys.argv[1]}}{{ddp.rank}}", "w").write(f"rank {{ddp.rank}}: {{torch.rand(3).tolist()}}")
end_run()
'''


def test_each_process_resumes_its_own_random_state(tmp_path):
    """Under torchrun every process' generators are saved, and each process gets its own back (they used
    to be rank 0's for everyone)."""
    script = tmp_path / "ddp_rng.py"
    script.write_text(RNG_SCRIPT.format(repo=str(REPO), ckpt=str(tmp_path / "ck"), out=str(tmp_path)))

    def run(phase):
        torchrun_two(script, tmp_path / f"logs_{phase}", phase)
        return [(tmp_path / f"{phase}{rank}").read_text() for rank in (0, 1)]

    saved, resumed = run("save"), run("load")
    assert resumed == saved and saved[0].split(":")[1] != saved[1].split(":")[1]


def test_cuda_generator_of_the_own_device_only(tmp_path, monkeypatch):
    """A checkpoint written on GPU 3 of 8 resumes on a machine with one GPU: one CUDA state per process
    (the current device's), restored into the current device, where all 8 visible ones used to be saved
    and set_rng_state_all failed with fewer. A process that never used CUDA saves none."""
    model, opt = tiny_model_and_optimizer()
    save_checkpoint(tmp_path / "cpu", model, opt, 1, {})
    from safetensors.torch import load_file
    assert set(load_file(str(tmp_path / "cpu" / "rng.safetensors"))) == {"rank0.torch_cpu"}
    state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: state if device == 3 else None)
    save_checkpoint(tmp_path / "gpu", model, opt, 1, {})
    restored = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s.tolist(), device)))
    resume_checkpoint(tmp_path / "gpu", model, opt, is_main=False)
    assert restored == [(state.tolist(), 0)]
