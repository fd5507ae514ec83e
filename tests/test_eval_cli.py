"""eval.py end to end on a tiny random checkpoint: every task writes results.json / report.md, tasks
accumulate in one run directory, --compare prints runs side by side, bad input fails clearly."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from minitoddler.checkpoint import save_model
from minitoddler.config import ModelConfig
from minitoddler.evals.report import compare_runs, render_report
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("eval_script", REPO / "eval.py")
eval_script = importlib.util.module_from_spec(spec)
sys.modules["eval_script"] = eval_script  # dataclasses look their module up while the file executes
spec.loader.exec_module(eval_script)


@pytest.fixture(scope="module")
def model_dir(shared_data, tmp_path_factory):
    pairs = json.loads((shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json").read_text())
    texts = [f"{p['prompt']}\n{p['chosen']}" for p in pairs[:2000]]
    texts += (shared_data / "eval" / "zorro" / "irregular-verb.txt").read_text().splitlines()[:1000]
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, tok_dir, vocab_size=512)
    eos = load_tokenizer(tok_dir).token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_tokenizer(tok_dir).get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos)
    out = tmp_path_factory.mktemp("model")
    save_model(ToddlerLM(cfg), out, tokenizer=tok_dir)
    return out


def run(*args):
    eval_script.main([str(a) for a in args])


def test_every_task_end_to_end(model_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", model_dir, "--out", out, "--device", "cpu"]
    run(*common, "--task", "zorro", "--data", shared_data / "eval" / "zorro", "--limit", 40)
    zorro = json.loads((out / "results.json").read_text())["tasks"]["zorro"]
    assert zorro["n_pairs"] == 23 * 40 and len(zorro["paradigms"]) == 23
    assert 0.35 < zorro["macro_accuracy"] < 0.65  # an untrained model is near chance
    assert "zorro: macro accuracy" in capsys.readouterr().out

    dialogue = shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json"
    run(*common, "--task", "dialogue", "--data", dialogue, "--limit", 50, "--convention", "minicons",
        "--bow-correction", "--save-scores")
    lex = tmp_path / "lex.csv"
    lex.write_text("word,pseudoword,category\nball,bapl,nouns\njump,jamp,predicates\n")
    run(*common, "--task", "lexical", "--data", lex)
    run(*common, "--task", "generation", "--limit", 3, "--max-new-tokens", 5, "--format", "dialogue",
        "--cdi", shared_data / "aoa" / "babylm_cdi_aoa_word_list.csv")

    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["zorro", "dialogue", "lexical", "generation"]  # accumulated
    assert results["tasks"]["dialogue"]["convention"] == "minicons" and results["tasks"]["dialogue"]["bow_correction"]
    assert results["tasks"]["lexical"]["paradigms"].keys() == {"nouns", "predicates"}
    scores = (out / "scores_dialogue.jsonl").read_text().splitlines()
    assert len(scores) == 50 and {"good_logprob", "bad_logprob", "context"} <= set(json.loads(scores[0]))
    assert len((out / "generations.jsonl").read_text().splitlines()) == 3
    report = (out / "report.md").read_text()
    assert report == render_report(results)
    for heading in ("## zorro", "## dialogue", "## lexical", "## generation", "### Sample exchanges"):
        assert heading in report
    assert "| quantifiers-superlative | 40 |" in report
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "zorro.png").is_file() == has_matplotlib
    assert ("Plots skipped" in report) == (not has_matplotlib)


def test_compare_runs(model_dir, shared_data, tmp_path, capsys):
    zorro = sorted((shared_data / "eval" / "zorro").glob("*.txt"))[:3]
    for name, convention in (("bos", "bos"), ("mc", "minicons")):
        run("--model", model_dir, "--out", tmp_path / name, "--device", "cpu", "--task", "zorro", "--data", *zorro,
            "--limit", 10, "--convention", convention)
    capsys.readouterr()
    run("--compare", tmp_path / "bos", tmp_path / "mc")
    table = capsys.readouterr().out
    assert table == compare_runs([tmp_path / "bos", tmp_path / "mc"])
    lines = table.splitlines()
    assert lines[0] == "| | bos | mc |"
    row = next(l for l in lines if l.startswith("| zorro: convention |"))
    assert row == "| zorro: convention | bos | minicons |"
    accs = [json.loads((tmp_path / n / "results.json").read_text())["tasks"]["zorro"]["macro_accuracy"]
            for n in ("bos", "mc")]
    assert next(l for l in lines if l.startswith("| zorro: macro accuracy %")) == \
        f"| zorro: macro accuracy % | {100 * accs[0]:.1f} | {100 * accs[1]:.1f} |"


def test_bad_input_fails_clearly(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        run("--model", model_dir, "--task", "blimp", "--data", tmp_path / "missing.jsonl", "--out", tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("one .\ntwo .\nthree .\n")
    with pytest.raises(ValueError, match="bad.txt:3"):
        run("--model", model_dir, "--task", "zorro", "--data", bad, "--out", tmp_path)
    with pytest.raises(SystemExit, match="--task must be one of"):
        run("--model", model_dir, "--task", "squad", "--out", tmp_path)
    with pytest.raises(SystemExit, match="pass --tokenizer"):
        run("--model", "tiny", "--task", "zorro", "--out", tmp_path)
    with pytest.raises(FileNotFoundError, match="results.json"):
        run("--compare", tmp_path / "nothing-here")
