"""eval.py end to end on a tiny random checkpoint: every task writes results.json / report.md, tasks
accumulate in one run directory, --compare prints runs side by side, bad input fails clearly."""
import importlib.util
import json

import pytest
import torch

from minitoddler.checkpoint import save_model
from minitoddler.config import ModelConfig
from minitoddler.evals.report import compare_runs, render_report
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer
from scripts import load_script

eval_script = load_script("eval")


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
    report = (out / "report.md").read_text().splitlines()
    assert report[0] == f"# Evaluation of `{model_dir}`"
    for heading in ("## zorro", "## dialogue", "## lexical", "## generation", "### Sample exchanges"):
        assert heading in report
    d = results["tasks"]["dialogue"]
    assert ("Convention: minicons (no BOS, first token unscored (minicons' sequence_score), beginning-of-word "
            f"correction). 50 pairs in 1 paradigms; ties ({d['ties']}) count as wrong.") in report
    assert f"**Macro accuracy {100 * d['macro_accuracy']:.1f}%** (mean over paradigms); " \
        f"micro {100 * d['micro_accuracy']:.1f}% (over pairs)." in report
    row = zorro["paradigms"]["quantifiers-superlative"]
    assert f"| quantifiers-superlative | 40 | {100 * row['correct'] / 40:.1f} | {row['ties']} |" in report
    lexical = results["tasks"]["lexical"]["paradigms"]
    assert f"| nouns | 1 | {100.0 * lexical['nouns']['correct']:.1f} | {lexical['nouns']['ties']} |" in report
    g = results["tasks"]["generation"]["metrics"]
    assert "| n_replies | 3 | – |" in report and f"| mlu_words | {g['mlu_words']:.3f} | – |" in report
    assert ("3 prompts x 1 samples, format dialogue, temperature 0.7, top_p 0.9, top_k None, at most 5 new "
            "tokens.") in report
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "zorro.png").is_file() == has_matplotlib
    assert any(line.startswith("Plots skipped") for line in report) == (not has_matplotlib)


def test_compare_runs(model_dir, shared_data, tmp_path, capsys):
    zorro = sorted((shared_data / "eval" / "zorro").glob("*.txt"))[:3]
    for name, convention in (("bos", "bos"), ("mc", "minicons")):
        run("--model", model_dir, "--out", tmp_path / name, "--device", "cpu", "--task", "zorro", "--data", *zorro,
            "--limit", 10, "--convention", convention)
    capsys.readouterr()
    run("--compare", tmp_path / "bos", tmp_path / "mc")
    table = capsys.readouterr().out
    r = [json.loads((tmp_path / n / "results.json").read_text())["tasks"]["zorro"] for n in ("bos", "mc")]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    expected = ["| | bos | mc |", "|---|---:|---:|", f"| model | `{model_dir}` | `{model_dir}` |",
                f"| Zorro (accuracy %) | {100 * r[0]['macro_accuracy']:.2f} | {100 * r[1]['macro_accuracy']:.2f} |",
                f"| zorro: macro accuracy % | {pct(r[0]['macro_accuracy'])} | {pct(r[1]['macro_accuracy'])} |",
                f"| zorro: micro accuracy % | {pct(r[0]['micro_accuracy'])} | {pct(r[1]['micro_accuracy'])} |",
                "| zorro: convention | bos | minicons |"]
    expected += [f"| zorro / {f.stem} | {pct(r[0]['paradigms'][f.stem]['correct'] / 10)} | "
                 f"{pct(r[1]['paradigms'][f.stem]['correct'] / 10)} |" for f in zorro]
    assert table == "\n".join(expected) + "\n"
    # the macro average is the mean of the three paradigm accuracies, worked out here from the counts
    assert r[0]["macro_accuracy"] == pytest.approx(sum(r[0]["paradigms"][f.stem]["correct"] for f in zorro) / 30)


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


def test_normalize_scores_the_training_format(model_dir, shared_data, tmp_path):
    """--normalize: the first dialogue pairs are scored as written out here by hand in the cleaned training
    format, and score as those hand-written strings do without the flag."""
    dialogue = shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json"
    run("--model", model_dir, "--out", tmp_path / "n", "--device", "cpu", "--task", "dialogue", "--data", dialogue,
        "--limit", 2, "--normalize", "--save-scores")
    rows = [json.loads(l) for l in (tmp_path / "n" / "scores_dialogue.jsonl").read_text().splitlines()]
    by_hand = [("*MOT: you are green?", "*CHI: i am blue.", "*CHI: and that one!"),
               ("*MOT: are you green?", "*CHI: i am red.", "*CHI: poor thomas's face.")]
    assert [(r["context"], r["good"], r["bad"]) for r in rows] == by_hand
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps([{"prompt": c, "chosen": g, "rejected": b} for c, g, b in by_hand]))
    run("--model", model_dir, "--out", tmp_path / "h", "--device", "cpu", "--task", "dialogue", "--data", hand,
        "--save-scores")
    plain = [json.loads(l) for l in (tmp_path / "h" / "scores_dialogue.jsonl").read_text().splitlines()]
    assert [(r["good_logprob"], r["bad_logprob"]) for r in rows] == [(r["good_logprob"], r["bad_logprob"]) for r in plain]
    results = json.loads((tmp_path / "n" / "results.json").read_text())["tasks"]["dialogue"]
    assert results["normalized"] is True
    assert "text normalized to the training format" in (tmp_path / "n" / "report.md").read_text()
    # without the flag the CHAT-spaced text is scored as it is ("I am blue ." differs from "i am blue.")
    run("--model", model_dir, "--out", tmp_path / "raw", "--device", "cpu", "--task", "dialogue", "--data", dialogue,
        "--limit", 2, "--save-scores")
    raw = json.loads((tmp_path / "raw" / "scores_dialogue.jsonl").read_text().splitlines()[0])
    assert raw["good"] == "*CHI: I am blue ." and raw["good_logprob"] != rows[0]["good_logprob"]
    with pytest.raises(SystemExit, match="--normalize applies to the minimal-pair tasks"):
        run("--model", model_dir, "--out", tmp_path / "g", "--task", "generation", "--normalize")


def test_report_and_compare_by_hand(tmp_path):
    """Paradigms of unequal size, so macro (mean over paradigms) and micro (over pairs) differ; the
    expected text is written out here."""
    task = {"macro_accuracy": (1 / 3 + 1) / 2, "micro_accuracy": 2 / 4, "n_pairs": 4, "ties": 1,
            "convention": "bos", "bow_correction": False, "seconds": 2.0,
            "paradigms": {"b": {"n": 1, "correct": 1, "ties": 0, "accuracy": 1.0},
                          "a": {"n": 3, "correct": 1, "ties": 1, "accuracy": 1 / 3}}}
    results = {"model": "m", "tokenizer": "t", "updated": "u", "tasks": {"zorro": task}}
    assert render_report(results).splitlines() == [
        "# Evaluation of `m`", "", "Tokenizer: `t`. Updated u.", "", "## zorro", "",
        "Convention: bos (BOS + sentence, every sentence token scored). 4 pairs in 2 paradigms; ties (1) count "
        "as wrong.", "", "**Macro accuracy 66.7%** (mean over paradigms); micro 50.0% (over pairs).", "",
        "Scored in 2.0 s (2 pairs/s).", "", "| paradigm | pairs | accuracy % | ties |", "|---|---:|---:|---:|",
        "| a | 3 | 33.3 | 1 |", "| b | 1 | 100.0 | 0 |"]
    for name, convention in (("x", "bos"), ("y", "minicons")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {**results, "tasks": {"zorro": {**task, "convention": convention, "bow_correction": name == "y"}}}))
    assert compare_runs([tmp_path / "x", tmp_path / "y"]) == (
        "| | x | y |\n|---|---:|---:|\n| model | `m` | `m` |\n| Zorro (accuracy %) | 66.67 | 66.67 |\n"
        "| zorro: macro accuracy % | 66.7 | 66.7 |\n"
        "| zorro: micro accuracy % | 50.0 | 50.0 |\n| zorro: convention | bos | minicons + bow |\n"
        "| zorro / a | 33.3 | 33.3 |\n| zorro / b | 100.0 | 100.0 |\n")


def test_evaluation_keeps_fp32_weights_unless_asked(model_dir, shared_data, tmp_path, monkeypatch):
    """On a device where --dtype auto means bf16 (a GPU, or a CPU with avx512_bf16), the default still scores
    in fp32: the minimal-pair accuracies the docs call reproduced exactly must not drift with the machine."""
    bf16_cpu = {"avx2", "avx512f", "avx512_bf16"}
    resolve = eval_script.resolve_dtype
    monkeypatch.setattr(eval_script, "resolve_dtype", lambda name, device: resolve(name, device, flags=bf16_cpu))
    zorro = ["--model", model_dir, "--device", "cpu", "--task", "zorro", "--data", shared_data / "eval" / "zorro",
             "--limit", 2]
    run(*zorro, "--out", tmp_path / "default")
    run(*zorro, "--out", tmp_path / "auto", "--dtype", "auto")
    dtype = lambda run: json.loads((tmp_path / run / "results.json").read_text())["tasks"]["zorro"]["dtype"]  # noqa: E731
    assert dtype("default").startswith("fp32") and dtype("auto").startswith("bf16")
