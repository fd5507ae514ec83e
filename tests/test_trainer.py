"""The loop skeleton every training script shares: cadence, progress lines, resume with its checks,
extra tensors in checkpoints, the non-finite guard."""
import json

import pytest
import torch

from minitoddler.config import preset
from minitoddler.model import ToddlerLM
from minitoddler.startup import start_run
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import NonFiniteLoss, check_finite, due, make_optimizer, progress_line, stop_on_nonfinite


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
