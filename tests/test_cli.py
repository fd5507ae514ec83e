"""The command-line surface: every flag of every script has --help text and every --help starts with what
the script does and examples; field comments become help; user errors end in one line and exit status 2."""
import argparse
import os
import runpy
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from minitoddler.cli import config_parser, field_help, run

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_pretrain.py", "train_sft.py", "train_rl.py", "eval.py", "bench.py", "demo.py",
           "minitoddler.chat", "minitoddler.serve", "minitoddler.teacher", "train_dpo.py",
           "minitoddler.rl.prefs", "minitoddler.data.prepare", "minitoddler.data.shards",
           "minitoddler.evals.lexical", "minitoddler.rewards.clarity", "minitoddler.rewards.length",
           "minitoddler.rewards.score", "minitoddler.rewards.train"]


class Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def script_parser(script: str, monkeypatch, argv=()) -> argparse.ArgumentParser:
    """The parser a script builds when run as `python SCRIPT ARGV` (caught at parse_args, nothing runs)."""
    def capture(self, *a, **k):
        raise Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with warnings.catch_warnings(), pytest.raises(Captured) as got:
        warnings.simplefilter("ignore", RuntimeWarning)  # run_module of an already imported module
        if script.endswith(".py"):
            runpy.run_path(str(REPO / script), run_name="__main__")
        else:
            runpy.run_module(script, run_name="__main__", alter_sys=True)
    return got.value.parser


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Flags whose help is empty once the '(default: ...)' part is taken away."""
    bad = []
    for a in parser._actions:
        text = (a.help or "").split("(default:")[0].strip()
        if not text or text == "(switch)":
            bad.append("/".join(a.option_strings) or a.dest)
    return bad


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help(script, monkeypatch):
    parser = script_parser(script, monkeypatch)
    assert undocumented(parser) == [], f"{script}: flags without help"
    doc = parser.description or ""
    assert doc.strip() and len(doc.split()) > 5, f"{script}: --help does not say what it does"
    examples = [ln for ln in doc.splitlines() if "python " in ln or ln.strip().startswith("torchrun ")]
    assert len(examples) >= 2, f"{script}: --help shows fewer than two example commands"


def test_train_rl_dpo_flags_have_help(monkeypatch):
    parser = script_parser("train_rl.py", monkeypatch, ["--algo", "dpo"])
    assert undocumented(parser) == []


@dataclass
class Toy:
    lr: float = 1e-3              # peak learning rate, per step
    warmup: int = 0               # 0 = 1% of the steps,
                                  # at least 1
    # a section heading, not part of warmup's help
    name: str = field(default="x", metadata={"help": "from metadata"})  # not this comment
    out: str = "runs/x"
    quiet: bool = False
    plain: int = 3


def test_help_from_comments_metadata_and_common_names():
    helps = field_help(Toy)
    assert helps["lr"] == "peak learning rate, per step"
    assert helps["warmup"] == "0 = 1% of the steps, at least 1"
    assert helps["name"] == "from metadata"
    assert helps["out"].startswith("output directory")  # COMMON_HELP
    assert helps["plain"] == ""
    text = config_parser(Toy, "Toy script.").format_help()  # '%' must not break argparse's formatting
    assert "0 = 1% of the steps, at least 1 (default: 0)" in " ".join(text.split())
    assert undocumented(config_parser(Toy)) == ["--quiet", "--plain"]


def entry(exc):
    def main():
        raise exc
    return main


def test_user_error_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.delenv("MINITODDLER_DEBUG", raising=False)
    for exc, says in [(FileNotFoundError("no pairs file at p.jsonl: run prepare first"), "no pairs file"),
                      (ValueError("--lr must be > 0,\n got -1"), "--lr must be > 0, got -1"),
                      (SystemExit("error: --model DIR is required"), "error: --model DIR is required")]:
        with pytest.raises(SystemExit) as e:
            run(entry(exc))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and "Traceback" not in err
    with pytest.raises(KeyError):  # a bug is not a user error
        run(entry(KeyError("x")))
    with pytest.raises(SystemExit) as e:  # exit codes pass through
        run(entry(SystemExit(0)))
    assert e.value.code == 0


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--debug", "--lr", "1"])
    got = []
    with pytest.raises(ValueError):
        run(lambda: (got.append(list(sys.argv)), entry(ValueError("bad"))())[1])
    assert got == [["x", "--lr", "1"]]  # --debug is taken out before the script parses its flags
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.setenv("MINITODDLER_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run(entry(FileNotFoundError("gone")))


@pytest.mark.parametrize("command", [
    ["eval.py", "--model", "tiny", "--tokenizer", "/nonexistent/tok", "--data", "/nonexistent"],
    ["train_sft.py", "--model", "/nonexistent/model"],
    ["eval.py", "--model", "/nonexistent/model"],
    ["-m", "minitoddler.data.shards", "--corpus", "/nonexistent/corpus", "--out", "/tmp/never"],
])
def test_wrong_path_gives_one_line_and_status_2(command):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MINITODDLER_DEBUG", None)
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert "/nonexistent" in done.stderr


def test_scoring_prints_progress_with_eta_in_plain_logs(monkeypatch, capsys):
    """Off a terminal, minimal-pair scoring prints a line every 20 s: count, rate and ETA (clock faked:
    30 s per reading; 4 buckets of 2 sequences)."""
    import types

    import torch

    from minitoddler.config import preset
    from minitoddler.evals import minimal_pairs
    from minitoddler.model import ToddlerLM
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.vocab_size = 64
    clock = iter(range(0, 10_000, 30))
    monkeypatch.setattr(minimal_pairs, "time", types.SimpleNamespace(time=lambda: next(clock)))
    prefixes, conts = [[1, 2, 3]] * 8, [[i + 4, 5] for i in range(8)]  # 8 distinct sequences of 5 tokens
    minimal_pairs.score_continuations(ToddlerLM(cfg), prefixes, conts, max_tokens=10, desc="zorro")
    lines = capsys.readouterr().err.strip().splitlines()
    # bucket k: 2k done at 30k s = 1/15 seq/s, ETA (8 - 2k) x 15 s
    assert lines == ["zorro: 2/8 sequences | 0.0667 seq/s | elapsed 30s | ETA 1m30s",
                     "zorro: 4/8 sequences | 0.0667 seq/s | elapsed 1m00s | ETA 1m00s",
                     "zorro: 6/8 sequences | 0.0667 seq/s | elapsed 1m30s | ETA 30s",
                     "zorro: 8/8 sequences | 0.0667 seq/s | elapsed 2m00s | ETA 0s"]
