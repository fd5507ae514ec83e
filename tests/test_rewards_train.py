"""The RM-1 / RM-2 training command: it learns a separable toy set, and runs on real data (tiny scratch
BERTs, short epochs); the ROC AUC against hand counts and scikit-learn."""
import json
import random

import numpy as np
import pytest
import sklearn.metrics  # test-only: the ROC AUC reference
import torch
import transformers  # test-only: the trained directory must load there too

from minitoddler.rewards import build_reward
from minitoddler.rewards.bert import load_bert
from minitoddler.rewards.train import Rows, evaluate, group_split, main, pair_accuracy, roc_auc
from minitoddler.rl.prefs import Pref

TINY = ["--vocab-size", "300", "--scratch-hidden", "32", "--scratch-layers", "1", "--device", "cpu"]


def toy_pairs(path, n_prompts=40, per_prompt=5, seed=0):
    """A separable set: a reply of toddler words scores 5, a reply of adult words 0, whatever the prompt."""
    rng, toddler, adult = random.Random(seed), ["juice", "ball", "doggie", "more", "mine"], \
        ["mortgage", "quarterly", "analysis", "regarding", "invoice"]
    rows = [{"prompt": f"what is {i} ?", "reply": " ".join(rng.choices(words, k=2)), "score": 5 * good}
            for i in range(n_prompts) for good in (rng.random() < 0.5 for _ in range(per_prompt))
            for words in [toddler if good else adult]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_group_split_keeps_groups_whole():
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 10
    train, val = group_split(groups, 0.25, seed=0)
    assert sorted(train + val) == list(range(20)) and len(val) >= 5
    assert not {groups[i] for i in train} & {groups[i] for i in val}


def test_roc_auc_by_hand_and_against_sklearn():
    # Positives 0.9, 0.8, 0.3 against negatives 0.8, 0.1: 1 + 1, 0.5 (tie) + 1, 0 + 1 = 4.5 of 6 pairs;
    # the None row is left out.
    assert roc_auc([0.9, 0.8, 0.3, 0.8, 0.1, 5.0], [1, 1, 1, 0, 0, None]) == 0.75
    assert roc_auc([0.2, 0.1], [1, 0]) == 1.0 and roc_auc([0.1, 0.2], [1, 0]) == 0.0
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    scores, classes = rng.integers(0, 20, 500) / 20, rng.integers(0, 2, 500)  # many ties
    assert roc_auc(scores, classes.tolist()) == pytest.approx(sklearn.metrics.roc_auc_score(classes, scores), abs=1e-12)


def test_training_learns_a_separable_toy_set(tmp_path):
    out = tmp_path / "rm"
    info = main(["--kind", "coherence", "--data", str(toy_pairs(tmp_path / "toy.jsonl")), "--prompt-col", "prompt",
                 "--reply-col", "reply", "--label-col", "score", "--init", "scratch", "--out", str(out),
                 "--epochs", "4", "--batch-size", "10", "--lr", "3e-3", "--val-fraction", "0.25", *TINY])
    before, after = info["val_before"], info["val"]
    assert info["val_rows"] >= 50 and 0.3 <= before["accuracy"] <= 0.7  # a fresh head guesses
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] >= 0.95
    assert metrics(out)[-1]["val_loss"] == after["loss"]
    ours = load_bert(out)
    assert ours.score(["what is it ?"] * 2, ["more juice", "quarterly invoice"]).tolist() == \
        pytest.approx([1, 0], abs=0.2)


def test_pair_accuracy_by_hand():
    """A stand-in scorer (reply length / 10): the chosen reply wins 2 of 4 pairs; a tie counts as a loss."""
    class ByLength:
        def score(self, prompts, replies, batch_size):
            assert len(prompts) == len(replies)
            return torch.tensor([len(r) / 10 for r in replies])
    pairs = [Pref("p", "long reply", "no", ""), Pref("p", "no", "long reply", ""), Pref("p", "abc", "xyz", ""),
             Pref("q", "three", "two", "")]
    assert pair_accuracy(ByLength(), pairs, batch_size=2) == 0.5


def test_judged_spearman_covers_the_judged_rows_only():
    """Judged rows whose scores follow their labels exactly (rho 1 by hand), beside two pair rows scored
    the wrong way round: over the judged rows alone rho is 1; over all five it would not be."""
    class Fixed:
        def score(self, a, b, batch_size):
            return torch.tensor([0.1, 0.5, 0.9, 0.2, 0.95])
    rows = Rows(["p"] * 5, ["r"] * 5, [0.2, 0.6, 1.0, 1.0, 0.0], ["g"] * 5, judged=[True, True, True, False, False])
    assert evaluate(Fixed(), rows, batch_size=5)["judged_spearman"] == pytest.approx(1.0)
    assert "judged_spearman" not in evaluate(Fixed(), Rows(["p"] * 5, ["r"] * 5, rows.labels, rows.groups), 5)


def test_coherence_learns_real_vs_random_pairs_and_keeps_eval_pairs_out(tmp_path, capsys):
    """Judge-scored rows plus preference pairs (chosen 1, rejected 0): the eval pairs' accuracy rises from
    below 0.8 to 0.95+, rows that also appear in --eval-pairs are dropped from training, Spearman covers judged rows."""
    rng, toddler, adult = random.Random(1), ["juice", "ball", "doggie", "more", "mine"], \
        ["mortgage", "quarterly", "analysis", "regarding", "invoice"]
    prefs = [{"prompt": f"*MOT: where is {i} ?", "chosen": "*CHI: " + " ".join(rng.choices(toddler, k=2)),
              "rejected": "*CHI: " + " ".join(rng.choices(adult, k=2))} for i in range(60)]
    (tmp_path / "prefs.json").write_text(json.dumps(prefs))
    held = [{"prompt": f"*MOT: what about {i} ?", "chosen": " ".join(rng.choices(toddler, k=3)),
             "rejected": " ".join(rng.choices(adult, k=3))} for i in range(20)] + prefs[:3]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    out = tmp_path / "rm2"
    info = main(["--kind", "coherence", "--data", str(toy_pairs(tmp_path / "toy.jsonl", n_prompts=20)),
                 "--prompt-col", "prompt", "--reply-col", "reply", "--label-col", "score",
                 "--pairs", str(tmp_path / "prefs.json"), "--eval-pairs", str(tmp_path / "eval.jsonl"),
                 "--init", "scratch", "--out", str(out), "--epochs", "4", "--batch-size", "10", "--lr", "3e-3",
                 "--val-fraction", "0.25", *TINY])
    assert "dropped 6 training rows whose caregiver line and reply are in --eval-pairs" in capsys.readouterr().out
    assert info["train_rows"] + info["val_rows"] == 100 + 2 * 60 - 6
    assert info["val_before"]["eval_pair_accuracy"] < 0.8 and info["val"]["eval_pair_accuracy"] >= 0.95
    assert info["val"]["judged_spearman"] > 0.8
    rows = metrics(out)
    assert rows[-1]["eval_pair_accuracy"] == info["val"]["eval_pair_accuracy"]
    assert rows[-1]["val_judged_spearman"] == info["val"]["judged_spearman"]


def test_train_coherence_from_scratch_saves_hf_layout(shared_data, tmp_path):
    out = tmp_path / "rm2"
    info = main(["--kind", "coherence", "--data", str(shared_data / "ppo/responses_with_scores.csv"),
                 "--init", "scratch", "--out", str(out), "--epochs", "1", "--limit", "150", "--batch-size", "50",
                 "--lr", "1e-3", "--val-fraction", "0.02", *TINY])
    assert info["train_rows"] == 150 and info["val_rows"] >= 0.02 * 5846
    assert [r["epoch"] for r in metrics(out)] == [0, 1] and "val_auc" not in metrics(out)[1]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    ours = load_bert(out)
    assert ours.max_length == 96
    prompts, replies = ["do you want juice ?", "where is the dog ?"], ["juice !", "dog outside"]
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    enc = transformers.AutoTokenizer.from_pretrained(out)(prompts, replies, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(hf(**enc).logits[:, 0]), ours.score(prompts, replies), atol=1e-5)
    lo, hi = (json.loads((out / "score_range.json").read_text())[k] for k in ("min", "max"))
    reward = build_reward("coherence", {"coherence_model": str(out), "coherence_minmax": "auto"})
    assert torch.allclose(reward.score(prompts, replies), (ours.score(prompts, replies) - lo) / (hi - lo))


def test_train_childlike_on_childes_tells_children_from_adults(shared_data, tmp_path):
    """Children and adults of real transcripts, held out by transcript: the AUC rises well above chance."""
    out = tmp_path / "rm1"
    eve, naomi = (sorted((shared_data / "childes" / d).glob("*.cha")) for d in ("brown-eve", "sachs-naomi"))
    info = main(["--kind", "childlike", "--data", *map(str, (eve[0], eve[5], naomi[0], naomi[10])), "--init",
                 "scratch", "--out", str(out), "--epochs", "2", "--limit", "1500", "--batch-size", "50",
                 "--val-fraction", "0.3", "--lr", "2e-3", *TINY])
    assert info["train_rows"] == 1500 and info["val_rows"] > 500
    assert info["val_before"]["auc"] < 0.65 and info["val"]["auc"] > 0.8
    assert [r["epoch"] for r in metrics(out)] == [0, 1, 2] and "val_auc" in metrics(out)[2]
    assert set(info["probes"]) == {"me carry bag", "Certainly! Here is a detailed explanation of the process."}
    assert load_bert(out).max_length == 32
    s = build_reward("childlike", {"childlike_model": str(out)}).score(["hi"], ["more juice"])
    assert torch.allclose(s, load_bert(out).score(["more juice"]))
