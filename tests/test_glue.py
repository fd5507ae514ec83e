"""(Super)GLUE fine-tuning (minitoddler/evals/glue.py, eval.py --task glue): the readers on the shared copy of
the official files, pair encoding against transformers, the head and its pooling on a padded batch, the
learning-rate schedule against transformers', a toy task that is learnt with the best epoch kept, resuming
after an interruption to the same result, and bad input ending in one line with status 2."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from minitoddler import cli
from minitoddler.config import ModelConfig
from minitoddler.evals import glue
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer
from scripts import load_script
from tiny_chat_model import random_lm_dir

eval_script = load_script("eval")
WORDS = "the cat dog sat ran on a mat log big small red".split()


@pytest.fixture(scope="module")
def glue_dir(shared_data) -> Path:
    return shared_data / "babylm" / "full_eval" / "glue_filtered"


def toy_rows(n: int, seed: int) -> list[dict]:
    """rte-format rows whose label is the first word ("yes"/"no"): separable by either pooling."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [WORDS[j] for j in torch.randint(len(WORDS), (int(torch.randint(3, 7, (1,), generator=g)),),
                                                 generator=g)]
        rows.append({"sentence1": ("yes " if label else "no ") + " ".join(words), "sentence2": " ".join(words[::-1]),
                     "label": label, "idx": i})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue_filtered")
    write_jsonl(root / "rte.train.jsonl", toy_rows(64, 0))
    write_jsonl(root / "rte.valid.jsonl", toy_rows(32, 1))
    return root


@pytest.fixture(scope="module")
def model_dir(glue_dir, toy_dir, tmp_path_factory) -> Path:
    texts = [r["sentence1"] + " " + r["sentence2"] for r in toy_rows(64, 0)]
    texts += (glue_dir / "rte.valid.jsonl").read_text().splitlines()[:40]
    return random_lm_dir(texts * 2, tmp_path_factory.mktemp("lm"), 64, 400, bos_token_id=0, eos_token_id=0)


def test_readers_on_the_official_files(glue_dir, model_dir):
    counts = {"rte": (2490, 139), "wsc": (554, 52), "mrpc": (3668, 204), "mnli": (10000, 4908)}
    for task, (n_train, n_valid) in counts.items():
        train, valid = (glue.read_examples(f, task) for f in glue.task_files(glue_dir, task))
        assert (len(train), len(valid)) == (n_train, n_valid)
    assert {x.label for x in glue.read_examples(glue_dir / "mnli.valid.jsonl", "mnli")} == {0, 1, 2}
    wsc = json.loads((glue_dir / "wsc.valid.jsonl").read_text().splitlines()[0])
    first = glue.read_examples(glue_dir / "wsc.valid.jsonl", "wsc", limit=1)
    assert first == [glue.Example(f'Does "{wsc["span2_text"]}" refer to "{wsc["span1_text"]}" in this passage?',
                                  wsc["text"], wsc["label"])]
    assert first[0].first == 'Does "he" refer to "Joe" in this passage?'
    mrc = json.loads((glue_dir / "multirc.valid.jsonl").read_text().splitlines()[2])
    x = glue.read_examples(glue_dir / "multirc.valid.jsonl", "multirc", limit=3)[2]
    assert (x.first, x.second) == (f"Question: {mrc['question']} Answer: {mrc['answer']}", mrc["paragraph"])
    assert len(glue.read_examples(glue_dir / "boolq.valid.jsonl", "boolq", limit=5)) == 5
    # pairs encode as transformers' tokenizer(pairs, truncation=True, max_length=...) does (longest first)
    from transformers import AutoTokenizer
    rows = glue.read_examples(glue_dir / "rte.valid.jsonl", "rte", limit=8)
    hf = AutoTokenizer.from_pretrained(model_dir)
    for length in (512, 24):
        want = hf([(x.first, x.second) for x in rows], truncation=True, max_length=length)["input_ids"]
        assert glue.encode(load_tokenizer(model_dir), rows, length) == want
    assert max(map(len, glue.encode(load_tokenizer(model_dir), rows, 24))) == 24


def test_head_and_pooling_on_a_padded_batch(model_dir):
    hidden = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert glue.pool(hidden, mask, "first").tolist() == [hidden[i, 0].tolist() for i in range(3)]
    assert glue.pool(hidden, mask, "last").tolist() == [hidden[0, 2].tolist(), hidden[1, 4].tolist(),
                                                        hidden[2, 0].tolist()]
    head = glue.ClassifierHead(8, 3)
    kinds = [type(m).__name__ for m in head.nonlinearity]
    assert kinds == ["LayerNorm", "Linear", "GELU", "LayerNorm", "Dropout", "Linear"]
    assert head.nonlinearity[0].weight is None and head.nonlinearity[4].p == 0.1
    assert head(torch.randn(4, 8)).shape == (4, 3)
    # on the model: a padded row's logits are those of the row alone, for either pooling
    lm = ToddlerLM(ModelConfig.load(model_dir / "config.json"))
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    for how in glue.POOLS:
        clf = glue.Classifier(lm, 2, how).eval()
        batch = clf(*glue.collate(seqs, "cpu"))
        alone = torch.cat([clf(*glue.collate([s], "cpu")) for s in seqs])
        torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
        h = lm(torch.tensor([seqs[1]]), hidden_only=True)[0]
        want = clf.head(h[0 if how == "first" else -1][None])
        torch.testing.assert_close(batch[1:2], want, rtol=1e-5, atol=1e-5)


def test_lr_schedule_is_the_pipelines():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    assert [glue.lr_factor(s, 6, 100) for s in (0, 3, 6, 100)] == [0.0, 0.5, 1.0, pytest.approx(0.1)]
    assert glue.lr_factor(53, 6, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 47 / 94)))
    for warmup, total in ((6, 100), (0, 7), (18, 310)):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=0.1)
        for step in range(total + 1):  # the lr of the optimizer's step `step`
            lr = opt.param_groups[0]["lr"]
            assert 3e-5 * glue.lr_factor(step, warmup, total) == pytest.approx(lr, rel=1e-9, abs=1e-15)
            opt.step()
            sched.step()


def toy_settings(**kw) -> glue.Settings:
    return glue.Settings(**{"epochs": 3, "batch_size": 8, "lr": 3e-3, "valid_batch_size": 16, "limit": 32, **kw})


def test_toy_task_is_learnt_and_the_best_epoch_kept(model_dir, toy_dir, tmp_path):
    model, tok = ToddlerLM(ModelConfig.load(model_dir / "config.json")), load_tokenizer(model_dir)
    for how in glue.POOLS:
        result, rows = glue.evaluate(model, tok, [toy_dir], ["rte"], toy_settings(pool=how), tmp_path / how)
        r = result["subtasks"]["rte"]
        accs = [h["accuracy"] for h in r["history"]]
        assert r["accuracy"] >= 0.9 and result["score"] == pytest.approx(100 * r["accuracy"]), (how, accs)
        assert r["best_epoch"] == 1 + accs.index(max(accs)) and r["steps"] == 3 * 4 and r["n_valid"] == 32
        assert sum(row["pred"] == row["label"] for row in rows) == round(32 * r["accuracy"])
        assert glue.classification_metrics([1, 1, 0, 0], [1, 0, 0, 1], 2) == {"accuracy": 0.5, "f1": 0.5, "mcc": 0.0}
    # the metrics against sklearn's (the pipeline's): f1 of label 1 and Matthews' correlation
    from sklearn.metrics import f1_score, matthews_corrcoef
    p, y = torch.randint(2, (50,), generator=torch.Generator().manual_seed(3)).tolist(), [i % 3 == 0 for i in range(50)]
    m = glue.classification_metrics(p, [int(v) for v in y], 2)
    assert m["f1"] == pytest.approx(f1_score(y, p)) and m["mcc"] == pytest.approx(matthews_corrcoef(y, p))


class Stop(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(model_dir, toy_dir, tmp_path, monkeypatch, capsys):
    model, tok = ToddlerLM(ModelConfig.load(model_dir / "config.json")), load_tokenizer(model_dir)
    settings = toy_settings(epochs=3, lr=1e-3)
    whole, _ = glue.evaluate(model, tok, [toy_dir], ["rte"], settings, tmp_path / "a")
    save = glue.save_checkpoint

    def save_then_stop(*args, **kw):
        save(*args, **kw)
        raise Stop  # killed right after epoch 1's state was written

    monkeypatch.setattr(glue, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        glue.evaluate(model, tok, [toy_dir], ["rte"], settings, tmp_path / "b")
    state = tmp_path / "b" / "glue" / "rte" / "state"
    assert sorted(p.name for p in state.iterdir()) == [
        "config.json", "extra.safetensors", "generation_config.json", "model.safetensors", "optimizer.safetensors",
        "rng.safetensors", "trainer_state.json"]  # no pickles
    monkeypatch.setattr(glue, "save_checkpoint", save)
    capsys.readouterr()
    resumed, _ = glue.evaluate(model, tok, [toy_dir], ["rte"], settings, tmp_path / "b")
    assert f"resumed from {state} after epoch 1" in capsys.readouterr().out
    a, b = whole["subtasks"]["rte"], resumed["subtasks"]["rte"]
    assert a["history"] == b["history"] and a["best_epoch"] == b["best_epoch"] and a["metrics"] == b["metrics"]
    assert json.loads((tmp_path / "a/glue/rte/result.json").read_text())["predictions"] == \
        json.loads((tmp_path / "b/glue/rte/result.json").read_text())["predictions"]
    assert not state.exists()  # removed once the task finished
    again, _ = glue.evaluate(model, tok, [toy_dir], ["rte"], settings, tmp_path / "b")
    assert "glue/rte: finished earlier" in capsys.readouterr().out and again["score"] == resumed["score"]


def test_eval_cli_and_suite(model_dir, toy_dir, glue_dir, shared_data, tmp_path, capsys):
    args = ["--model", model_dir, "--device", "cpu", "--epochs", 1, "--limit", 32]
    eval_script.main([str(a) for a in [*args, "--task", "glue", "--glue-tasks", "rte", "--data", toy_dir,
                                       "--out", tmp_path / "o"]])
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["table"]["(Super)GLUE"] == results["tasks"]["glue"]["score"]
    assert "glue: (Super)GLUE score" in capsys.readouterr().out
    report = (tmp_path / "o" / "report.md").read_text()
    t = results["tasks"]["glue"]["subtasks"]["rte"]
    assert "## glue" in report and f"| rte | 32 | 32 | {t['best_epoch']} | {100 * t['accuracy']:.2f} | – |" in report
    suite = tmp_path / "full_eval"
    write_jsonl(suite / "blimp_filtered" / "adjunct_island.jsonl",
                map(json.loads, (shared_data / "babylm/full_eval/blimp_filtered/adjunct_island.jsonl").read_text().splitlines()[:3]))
    (suite / "glue_filtered").mkdir()
    for name in ("rte.train.jsonl", "rte.valid.jsonl"):
        (suite / "glue_filtered" / name).write_text((toy_dir / name).read_text())
    (suite / "glue_filtered" / "boolq.valid.jsonl").write_text((glue_dir / "boolq.valid.jsonl").read_text()[:3000])
    eval_script.main([str(a) for a in [*args, "--suite", "babylm", suite, "--out", tmp_path / "s"]])
    assert "glue: skipped (fine-tuning, slow): add --glue-tasks all" in capsys.readouterr().out
    eval_script.main([str(a) for a in [*args, "--suite", "babylm", suite, "--out", tmp_path / "s", "--glue-tasks", "all"]])
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert list(results["tasks"]["glue"]["uids"]) == ["rte"] and "(Super)GLUE" in results["table"]
    assert "boolq.train.jsonl" in results["suite"]["missing"]["glue/boolq"] and "glue/wsc" in results["suite"]["missing"]


@pytest.mark.parametrize("args, message", [
    (["--glue-tasks", "boolq", "--data", "{glue}"], r"^error: {glue}/boolq.train.jsonl not found: the boolq data is "
     r"full_eval/glue_filtered/boolq.train.jsonl in the official pipeline's evaluation_data \(OSF"),
    (["--glue-tasks", "rte", "--data", "{tmp}/wrong"], r"^error: {tmp}/wrong/rte.train.jsonl:1: not a rte row: no "
     r"'sentence1', 'sentence2' \(its fields are those of a wsc file\)"),
    (["--glue-tasks", "rte", "--data", "{tmp}/empty"], r"^error: {tmp}/empty/rte.valid.jsonl: empty \(no rte rows\)"),
    (["--glue-tasks", "rte", "--data", "{tmp}/label"], r"^error: {tmp}/label/rte.train.jsonl:2: label 'yes': a rte "
     r"label is an integer from 0 to 1"),
    (["--glue-tasks", "cola", "--data", "{glue}"], r"^error: --glue-tasks: unknown task cola"),
    (["--pool", "mean", "--data", "{glue}"], r"^error: --pool must be one of first, last; got 'mean'"),
])
def test_bad_input_is_one_line_and_status_2(glue_dir, model_dir, toy_dir, tmp_path, monkeypatch, capsys, args, message):
    import re
    rte = (toy_dir / "rte.train.jsonl").read_text()
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "rte.train.jsonl").write_text((glue_dir / "wsc.train.jsonl").read_text()[:2000].rsplit("\n", 1)[0])
    (tmp_path / "wrong" / "rte.valid.jsonl").write_text(rte)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "rte.train.jsonl").write_text(rte)
    (tmp_path / "empty" / "rte.valid.jsonl").write_text("\n")
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "rte.train.jsonl").write_text(rte.replace('"label": 1', '"label": "yes"', 1))
    (tmp_path / "label" / "rte.valid.jsonl").write_text(rte)
    args = [a.format(glue=glue_dir, tmp=tmp_path) for a in args]
    monkeypatch.setattr(sys, "argv", ["eval.py", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--task",
                                      "glue", "--device", "cpu", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run(eval_script.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert re.match(message.format(glue=re.escape(str(glue_dir)), tmp=re.escape(str(tmp_path))), err[0]), err[0]
