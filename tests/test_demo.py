"""demo.py, the README's main command, at an even smaller size: every stage runs and writes its output, the
printout holds the side-by-side replies and the table, the table's Zorro accuracy matches a naive scorer,
a rerun skips every stage, other settings for a finished training stage are refused (the evaluation
runs again); the bundled minimal-pair
sample is a faithful subset of the released benchmarks; pyproject.toml's test extra is requirements-dev.txt."""
import json
import random
import re
import tomllib
from pathlib import Path

import pytest
import torch

import demo
from minitoddler.checkpoint import load_model
from minitoddler.evals.minimal_pairs import read_zorro
from minitoddler.formats import render_exchange
from minitoddler.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "minitoddler" / "data" / "sample_eval"
SMALL = dict(pretrain_steps=4, pretrain_batch_tokens=2048, sft_stages="1:2e-3:0.1", sft_batch_size=16,
             rm_epochs=1, rm_limit=64, grpo_steps=2, grpo_prompts=2, grpo_generations=4, max_new_tokens=8,
             show=2, eval_lines=6, eval_pairs=1, seed=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = demo.DemoConfig(out=str(out), **SMALL)
    return cfg, out, demo.main(cfg)


def test_every_stage_ran_and_wrote_its_output(run, capsys):
    cfg, out, results = run
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["prepare", "tokenizer", "pretrain", "sft", "rm1", "length", "grpo", "evaluate"]
    for d in ("pretrain", "sft", "grpo"):
        assert (out / d / "final" / "model.safetensors").is_file() and (out / d / "final" / "tokenizer.json").is_file()
    assert (out / "rm1" / "train_info.json").is_file() and (out / "length.json").is_file()
    steps = [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()
             if "reward/total" in line]
    assert steps == [1, 2]
    assert set(results["replies"]) == {"child", "pretrain", "sft", "grpo"}
    assert all(len(r) == 6 for r in results["replies"].values())


def test_printout_and_table(run, tmp_path, capsys):
    """The rerun prints what the first run printed: two caregiver lines with four replies each, the table."""
    cfg, out, results = run
    demo.main(cfg)
    text = capsys.readouterr().out
    assert text.count("caregiver:   ") == 2 and text.count("the real child said:") == 2
    for label in ("after pretraining", "after SFT", "after GRPO"):
        assert text.count(f"  {label}:") == 2
        assert re.search(rf"^{label} +\d+\.\d{{3}} +-?\d+\.\d{{3}} +-?\d+\.\d{{3}} +\d+\.\d +\d+\.\d{{3}} "
                         rf"+\d+\.\d{{3}} +\d+\.\d% +\d+\.\d%$", text, re.M), label
    assert f"written under {out}/" in text
    why = "Why the replies hardly depend on the caregiver line"
    assert (results["table"]["sft"]["line_gain"] < 0.1) == (why in text)
    # words per reply of the real children, counted here by hand
    child = results["replies"]["child"]
    words = sum(len(re.findall(r"[a-z0-9]+(?:'[a-z]+)*", r.lower())) for r in child) / len(child)
    assert results["table"]["child"]["words_per_reply"] == pytest.approx(words)
    distinct = {tuple(w[i:i + 2]) for r in child for w in [re.findall(r"[a-z]+(?:'[a-z]+)*", r.lower())]
                for i in range(len(w) - 1)}
    pairs = sum(max(0, len(re.findall(r"[a-z]+(?:'[a-z]+)*", r.lower())) - 1) for r in child)
    assert results["table"]["child"]["distinct_2"] == pytest.approx(len(distinct) / pairs)


def test_line_gain_matches_a_naive_scorer(run):
    """The SFT model's line gain, pair by pair: summed -log p of each real reply's tokens after its own
    caregiver line and after the shuffled one (demo's seeded order), per reply token."""
    cfg, out, results = run
    model = load_model(out / "sft" / "final").eval()
    tok = load_tokenizer(out / "sft" / "final", strict=False)
    test = [json.loads(line) for line in (out / "data" / "pairs" / "test.jsonl").read_text().splitlines()]
    test = test[:cfg.eval_lines]
    order = list(range(len(test)))
    random.Random(cfg.seed).shuffle(order)

    def loss_per_token(prompts):
        total = count = 0
        for prompt, row in zip(prompts, test):
            ids, mask = render_exchange(tok, prompt, row["response"], "chatml")
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
            total -= sum(lp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
            count += sum(mask[1:])
        return total / count
    own = loss_per_token([r["prompt"] for r in test])
    assert results["table"]["sft"]["val_loss"] == pytest.approx(own, abs=1e-4)
    shuffled = loss_per_token([test[j]["prompt"] for j in order])
    assert results["table"]["sft"]["line_gain"] == pytest.approx(shuffled - own, abs=1e-4)


def test_zorro_accuracy_matches_a_naive_scorer(run):
    """One pair per paradigm, each sentence scored alone (BOS + tokens, summed log-softmax), no batching."""
    cfg, out, results = run
    model = load_model(out / "grpo" / "final").eval()
    tok = load_tokenizer(out / "grpo" / "final", strict=False)
    bos = model.cfg.bos_token_id

    def score(text):
        ids = torch.tensor([[bos] + tok.encode(text, add_special_tokens=False).ids])
        with torch.no_grad():
            lp = model(ids).float().log_softmax(-1)
        return lp[0, :-1].gather(-1, ids[0, 1:, None]).sum().item()

    files = sorted((SAMPLE / "zorro").glob("*.txt"))
    right = [float(score(p.good) > score(p.bad)) for p in (read_zorro(f)[0] for f in files)]
    assert results["table"]["grpo"]["zorro"] == pytest.approx(sum(right) / len(right), abs=1e-9)


def test_rerun_skips_and_other_settings_are_refused(run, capsys):
    cfg, out, results = run
    final = out / "grpo" / "final" / "model.safetensors"
    before = final.stat().st_mtime_ns
    again = demo.main(cfg)
    text = capsys.readouterr().out
    assert text.count("-- done already") == 8 and "finished in" not in text
    assert final.stat().st_mtime_ns == before and again == results
    with pytest.raises(SystemExit, match="stage 'sft' .* finished with other settings.*another --out"):
        demo.main(demo.DemoConfig(**{**vars(cfg), "sft_stages": "1:1e-3:0.1"}))
    capsys.readouterr()
    fewer = demo.main(demo.DemoConfig(**{**vars(cfg), "show": 1}))  # the evaluation alone runs again
    text = capsys.readouterr().out
    assert text.count("-- done already") == 7 and "[8/8] evaluate: finished in" in text
    assert len(fewer["shown"]) == 1 and fewer["table"] == results["table"]


def test_bundled_sample_is_a_subset_of_the_releases(shared_data):
    assert "MIT License" in (SAMPLE / "zorro" / "LICENSE").read_text()
    assert "CC BY 4.0" in (SAMPLE / "README.md").read_text()
    zorro = sorted((SAMPLE / "zorro").glob("*.txt"))
    assert len(zorro) == 23
    for f in zorro:
        src = (shared_data / "eval" / "zorro" / f.name).read_text().splitlines()
        released = {(src[i], src[i + 1]) for i in range(0, len(src), 2)}
        mine = f.read_text().splitlines()
        pairs = {(mine[i], mine[i + 1]) for i in range(0, len(mine), 2)}
        assert len(pairs) == 20 and pairs <= released, f
    rows = [json.loads(line) for line in (SAMPLE / "blimp" / "blimp_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 670
    by_uid = {}
    for r in rows:
        by_uid.setdefault(r["UID"], []).append(r)
    assert len(by_uid) == 67 and all(len(v) == 10 for v in by_uid.values())
    for uid, mine in by_uid.items():
        src = {r["pairID"]: r for r in map(json.loads, (shared_data / "eval" / "blimp" / f"{uid}.jsonl")
                                           .read_text().splitlines())}
        assert all({k: src[r["pairID"]][k] for k in r} == r for r in mine), uid


def test_pyproject_extra_is_requirements_dev():
    def names(lines):
        return sorted(re.split(r"[<>=\s#]", line.strip(), maxsplit=1)[0].lower() for line in lines
                      if line.strip() and not line.lstrip().startswith(("#", "-")))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    assert names(project["project"]["optional-dependencies"]["test"]) == names(dev)
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
