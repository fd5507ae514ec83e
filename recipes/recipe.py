"""What the recipes share: the inputs a recipe needs on disk, checked in seconds, and its stages, each a
command line of this repository's scripts that is skipped once its output exists.

A recipe is a list of `Need`s (a path, what it is, how to get it, a check) and of `Stage`s (a command,
the file that marks it finished, the expected time on a 2-core CPU and on one GPU). `main` gives every
recipe the same flags: `--check` validates the inputs and exits, `--dry-run` prints the commands,
no flag checks and then runs the stages in order (a rerun skips the finished ones).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Need:
    flag: str                       # the recipe's flag that names it, e.g. "--childes"
    path: str                       # "" when the flag was not given
    what: str                       # what it is, for the messages
    how: str                        # how to get it
    check: Callable[[Path], str]    # returns a one-line description; raises ValueError saying what is wrong


@dataclass
class Stage:
    name: str
    argv: list[str]                 # after `python`: a script of this repository or `-m module`
    done: str                       # this path exists once the stage has finished ("": always run)
    cpu: str                        # expected time on a 2-core CPU
    gpu: str                        # expected time on one GPU
    notes: list[str] = field(default_factory=list)
    task: str = ""                  # eval.py stages: done when `done` (a results.json) holds this task

    def finished(self) -> bool:
        if not self.done:
            return False  # always run (a printout)
        path = Path(self.done)
        if not self.task:
            return path.exists()
        return path.is_file() and self.task in json.loads(path.read_text()).get("tasks", {})


def chat_dir(path: Path) -> str:
    """A directory of CHILDES .cha transcripts (searched recursively), the first of which starts as CHAT does."""
    if not path.is_dir():
        raise ValueError("not a directory")
    files = sorted(path.rglob("*.cha"))
    if not files:
        raise ValueError("holds no .cha files (searched recursively)")
    head = files[0].read_text(encoding="utf-8", errors="replace")[:2000]
    if "@Begin" not in head:
        raise ValueError(f"{files[0]} does not start like a CHAT transcript (no @Begin in its header)")
    return f"{len(files)} .cha transcripts"


def _config(path: Path) -> dict:
    if not path.is_dir():
        raise ValueError("not a directory")
    if not (path / "config.json").is_file():
        raise ValueError("has no config.json (a Hugging Face model directory has one)")
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config.json is not valid JSON ({e})") from None


def _weights(path: Path) -> None:
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        bins = [p.name for p in path.glob("*.bin")]
        raise ValueError("has no model.safetensors" + (f" (only {', '.join(bins)}: convert it to safetensors, "
                                                         "e.g. save_pretrained(..., safe_serialization=True))"
                                                         if bins else ""))


def causal_lm(path: Path, hidden_size: int | None = None, layers: int | None = None) -> str:
    """A Llama-architecture model directory (ours, SmolLM2, Llama-3.x) with safetensors weights and
    tokenizer.json; optionally of a given size."""
    cfg = _config(path)
    if cfg.get("model_type") != "llama":
        raise ValueError(f"config.json says model_type {cfg.get('model_type')!r}; a Llama-architecture model is needed")
    for key, want in (("hidden_size", hidden_size), ("num_hidden_layers", layers)):
        if want is not None and cfg.get(key) != want:
            raise ValueError(f"config.json has {key} {cfg.get(key)}, expected {want}: is it the right model?")
    _weights(path)
    if not (path / "tokenizer.json").is_file():
        raise ValueError("has no tokenizer.json")
    return f"Llama, hidden {cfg.get('hidden_size')}, {cfg.get('num_hidden_layers')} layers, vocabulary {cfg.get('vocab_size')}"


def bert(path: Path) -> str:
    """A BERT directory (bert-base-uncased, a MiniLM, a trained RM) with safetensors weights and a vocabulary."""
    cfg = _config(path)
    if cfg.get("model_type") != "bert":
        raise ValueError(f"config.json says model_type {cfg.get('model_type')!r}; a BERT model is needed")
    _weights(path)
    if not ((path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file()):
        raise ValueError("has neither vocab.txt nor tokenizer.json")
    return f"BERT, hidden {cfg.get('hidden_size')}, {cfg.get('num_hidden_layers')} layers"


def data_file(*suffixes: str) -> Callable[[Path], str]:
    """A non-empty file with one of `suffixes`."""
    def check(path: Path) -> str:
        if not path.is_file():
            raise ValueError("not a file")
        if suffixes and path.suffix not in suffixes:
            raise ValueError(f"expected a {' or '.join(suffixes)} file")
        size = path.stat().st_size
        if not size:
            raise ValueError("is empty")
        return f"{size / 1e6:.1f} MB"
    return check


def eval_dir(pattern: str) -> Callable[[Path], str]:
    """A directory (or file) of benchmark files matching `pattern`."""
    def check(path: Path) -> str:
        files = [path] if path.is_file() else sorted(path.glob(pattern)) if path.is_dir() else None
        if files is None:
            raise ValueError("not found")
        if not files:
            raise ValueError(f"holds no {pattern} files")
        return f"{len(files)} files"
    return check


def modules_present(stages: list[Stage]) -> list[str]:
    """Problems with the repository itself: scripts and `-m` modules the stages call that are missing."""
    problems = []
    for s in stages:
        target = s.argv[1].replace(".", "/") + ".py" if s.argv[0] == "-m" else s.argv[0]
        if not (REPO / target).is_file():
            problems.append(f"stage {s.name}: {target} is missing from this checkout ({REPO})")
    return problems


def check(needs: list[Need], stages: list[Stage]) -> bool:
    """Print one line per input (ok / what is wrong and how to get it); True when all are fine."""
    ok = True
    for n in needs:
        if not n.path:
            print(f"MISSING  {n.flag}: {n.what}\n         how to get it: {n.how}")
            ok = False
            continue
        try:
            print(f"ok       {n.flag} {n.path}: {n.check(Path(n.path))}")
        except ValueError as e:
            print(f"PROBLEM  {n.flag} {n.path}: {e}\n         expected: {n.what}\n         how to get it: {n.how}")
            ok = False
    for problem in modules_present(stages):
        print(f"PROBLEM  {problem}")
        ok = False
    return ok


def show_times(stages: list[Stage]) -> None:
    width = max(len(s.name) for s in stages)
    cpu = max(len(s.cpu) for s in stages)
    print(f"{'stage':<{width}}  {'2-core CPU':<{cpu}}  one GPU")
    for s in stages:
        print(f"{s.name:<{width}}  {s.cpu:<{cpu}}  {s.gpu}")
        for note in s.notes:
            print(f"{'':<{width}}  {note}")


def command(stage: Stage) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, *stage.argv])


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="validate the inputs (seconds) and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(name: str, needs: list[Need], stages: list[Stage], check_only: bool, dry_run: bool) -> int:
    print(f"{name}: expected time (measured where marked, else an estimate from FLOPs and measured throughput)")
    show_times(stages)
    print()
    if not check(needs, stages):
        print(f"\n{name}: inputs missing or wrong (above); nothing was run")
        return 1
    if check_only:
        print(f"\n{name}: all inputs present")
        return 0
    for i, s in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {s.name}"
        if dry_run:
            print(f"{head}: {command(s)}")
        elif s.finished():
            print(f"{head}: done already ({s.done}), skipped")
        else:
            print(f"{head}: {command(s)}", flush=True)
            done = subprocess.run([sys.executable, *s.argv], cwd=REPO)
            if done.returncode:
                print(f"{head} failed (exit {done.returncode}); fix it and rerun: finished stages are skipped")
                return done.returncode
    return 0
