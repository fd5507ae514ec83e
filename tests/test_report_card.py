"""The toddler report card: every metric worked out by hand on six replies, the model/children card of the
generation task (sampling rounds, lines with a real child's reply, RM-1/RM-2, the length histogram), and
eval.py --task generation end to end with the keys --compare shows."""
import importlib.util
import json
import math
import sys

import pytest
import torch

from minitoddler.evals import report_card as rc
from minitoddler.evals.generation import Prompt, toddler_report_card
from scripts import load_script


PROMPTS = ["do you want juice ?", "is it your juice ?", "what's that ?", "who is that ?", "where is the doggie ?",
           "do you want juice ?"]
REPLIES = ["I want juice .", "no ! no juice .", "", "doggie", "doggie ! doggie .", "i want juice"]
# words:    i want juice | no no juice | - | doggie | doggie doggie | i want juice   -> 12 words, 5 types
# sentences: [i want juice] [no] [no juice] [doggie] [doggie] [doggie] [i want juice] -> 7 sentences
AOA = {"i": 2.0, "want": 3.0, "juice": 4.0, "doggie": 2.5}
CDI = {"juice", "no", "doggie"}


def test_length_measures_by_hand():
    assert rc.words_per_reply(REPLIES) == 12 / 6     # the empty reply counts as 0 words
    assert rc.mlu_words(REPLIES) == 12 / 7           # per sentence: the empty reply has none
    assert rc.words_per_reply([]) == 0.0 and rc.mlu_words([""]) == 0.0


def test_vocabulary_measures_by_hand():
    assert rc.type_token_ratio(REPLIES) == 5 / 12
    assert rc.distinct_n(REPLIES, 1) == 5 / 12
    # bigrams inside each reply: (i want) (want juice) | (no no) (no juice) | (doggie doggie) | (i want) (want juice)
    assert rc.distinct_n(REPLIES, 2) == 5 / 7
    assert rc.distinct_n(["a b c", "c a"], 2) == 3 / 3  # (c c) across the two replies is no bigram
    assert rc.distinct_n(["doggie", ""], 2) == 0.0


def test_template_share_by_hand():
    # reply forms (case and punctuation ignored): "i want juice" x2; "no no juice", "", "doggie", "doggie doggie" x1
    assert rc.template_share(REPLIES) == 6 / 6         # five forms: the five most frequent cover every reply
    assert rc.template_share(REPLIES, top=1) == 2 / 6
    assert rc.template_share(REPLIES, top=2) == (2 + 1) / 6
    assert rc.template_share(REPLIES + ["mine ."]) == (2 + 1 + 1 + 1 + 1) / 7  # six forms now, one left out
    assert rc.template_share(["I eat it."] * 5 + ["i eat it !", "no"]) == 7 / 7
    assert rc.template_share([]) == 0.0


def test_echo_rate_by_hand():
    # echoed words per reply: want juice (2 of 3) | juice (1 of 3) | - | - (0 of 1) | doggie doggie (2 of 2) | 2 of 3
    assert rc.echo_rate(PROMPTS, REPLIES) == (2 + 1 + 0 + 0 + 2 + 2) / 12
    assert rc.echo_rate(["where is it ?"], ["it is"]) == 2 / 2 and rc.echo_rate(["hi"], [""]) == 0.0
    with pytest.raises(ValueError):
        rc.echo_rate(PROMPTS[:2], REPLIES)


def test_empty_or_unfinished_by_hand():
    assert [rc.unfinished(r) for r in REPLIES] == [False, False, False, True, False, True]
    assert rc.unfinished("no ? ") is False and rc.unfinished("i want +...") is False
    assert rc.empty_or_unfinished_share(REPLIES) == (1 + 2) / 6  # "" empty; "doggie", "i want juice" cut off


def test_aoa_and_cdi_by_hand():
    # rated words: i want juice | juice | doggie | doggie doggie | i want juice ("no" is not rated)
    assert rc.mean_aoa(REPLIES, AOA) == pytest.approx((2 + 3 + 4 + 4 + 2.5 + 2.5 + 2.5 + 2 + 3 + 4) / 10)
    assert rc.mean_aoa(["no"], AOA) is None
    assert rc.cdi_share(REPLIES, CDI) == (3 + 2 + 3) / 12  # juice x3, no x2, doggie x3
    assert rc.unrated_share(REPLIES, AOA) == 2 / 12  # "no" twice
    assert rc.unrated_share(["ces talk .", ""], {"talk": 3.0}) == 1 / 2 and rc.unrated_share([""], AOA) == 0.0


def test_the_card_and_its_keys():
    card = rc.report_card(PROMPTS, REPLIES, AOA, CDI)
    assert card == {"n_replies": 6, "words_per_reply": 12 / 6, "mlu_words": 12 / 7, "type_token_ratio": 5 / 12,
                    "distinct_1": 5 / 12, "distinct_2": 5 / 7, "template_share": 1.0, "echo_rate": 7 / 12,
                    "mean_aoa_years": pytest.approx(29.5 / 10), "unrated_word_share": 2 / 12, "cdi_word_share": 8 / 12,
                    "empty_or_unfinished_share": 3 / 6}
    assert "mean_aoa_years" not in rc.report_card(PROMPTS, REPLIES)
    assert rc.mean_card([{"a": 1.0, "b": None, "n": 4}, {"a": 3.0, "b": 2.0, "n": 4}]) == {"a": (1 + 3) / 2, "b": 2.0,
                                                                                         "n": 4}
    assert rc.side_by_side({"a": 1}, {"a": 2}) == {"model/a": 1, "children/a": 2}
    assert rc.side_by_side({"a": 1}, None) == {"model/a": 1}


def test_generation_card_rounds_and_gold_lines(monkeypatch, tmp_path):
    """Only the lines with a real child's reply are carded; two sampling rounds give the mean of two cards."""
    prompts = [Prompt("do you want juice ?", "juice ."), Prompt("what's that ?"), Prompt("where is the doggie ?",
                                                                                       "doggie gone .")]
    rounds = [["i want juice .", "ignored", "doggie ."], ["no .", "ignored", "doggie doggie"]]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    keys, notes, png = toddler_report_card(prompts, rounds, histogram=tmp_path / "h.png")
    assert keys["model/n_replies"] == 2 and keys["children/n_replies"] == 2
    assert keys["model/words_per_reply"] == (4 / 2 + 3 / 2) / 2
    assert keys["model/echo_rate"] == (3 / 4 + 2 / 3) / 2  # want juice, doggie (3 of 4) | doggie doggie (2 of 3)
    assert keys["model/empty_or_unfinished_share"] == (0 / 2 + 1 / 2) / 2
    assert keys["children/words_per_reply"] == 3 / 2 and keys["children/echo_rate"] == (1 + 1) / 3
    assert png is None and not (tmp_path / "h.png").exists()
    assert notes == ["report card: RM-1 and RM-2 skipped (no --rm1 / --rm2 model directory given)",
                     "reply-length histogram skipped: matplotlib is not installed (`pip install matplotlib`)"]
    keys, notes, _ = toddler_report_card([Prompt("hi ?"), Prompt("more ?")], [["hi .", "no ."]])
    assert keys["model/n_replies"] == 2 and not any(k.startswith("children/") for k in keys)
    assert any("no children's column" in n for n in notes)


def test_length_histogram_png(tmp_path):
    pytest.importorskip("matplotlib")
    path, note = rc.length_histogram(tmp_path / "d" / "h.png", REPLIES, ["juice .", "no no ."])
    assert note is None and path.read_bytes()[:4] == b"\x89PNG"


def test_rewards_on_both_cards(tmp_path):
    from minitoddler.rewards.bert import Bert, BertConfig, load_bert, save_bert, train_wordpiece

    torch.manual_seed(0)
    wp = train_wordpiece(["i want juice", "no mine", "what is that", "a ball"], vocab_size=60)
    cfg = BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    save_bert(Bert(cfg, wp, max_length=32, num_labels=1).eval(), tmp_path / "rm")
    prompts = [Prompt("what is that ?", "a ball ."), Prompt("more juice ?", "no .")]
    rounds = [["a ball", "i want juice"]]
    keys, notes, _ = toddler_report_card(prompts, rounds, rm1=tmp_path / "rm", rm2=tmp_path / "rm")
    rm = load_bert(tmp_path / "rm")
    texts, golds = ["what is that ?", "more juice ?"], ["a ball .", "no ."]
    assert keys["model/rm1_childlike"] == pytest.approx(rm.score(rounds[0]).mean().item(), abs=1e-6)
    assert keys["model/rm2_coherence"] == pytest.approx(rm.score(texts, rounds[0]).mean().item(), abs=1e-6)
    assert keys["children/rm1_childlike"] == pytest.approx(rm.score(golds).mean().item(), abs=1e-6)
    assert keys["children/rm2_coherence"] == pytest.approx(rm.score(texts, golds).mean().item(), abs=1e-6)
    assert not any("RM-" in n for n in notes)
    keys, notes, _ = toddler_report_card(prompts, rounds, rm1=tmp_path / "rm")
    assert "children/rm1_childlike" in keys and "children/rm2_coherence" not in keys
    assert notes == ["report card: RM-2 skipped (no --rm1 / --rm2 model directory given)"]


def test_eval_generation_end_to_end(shared_data, tmp_path, capsys):
    from tiny_chat_model import make_model_dir

    eval_script = load_script("eval")
    model_dir = make_model_dir(shared_data, tmp_path / "m")
    pairs = shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json"
    out = tmp_path / "run"
    eval_script.main([str(a) for a in (
        "--model", model_dir, "--out", out, "--device", "cpu", "--task", "generation", "--data", pairs,
        "--limit", 6, "--samples", 2, "--max-new-tokens", 8, "--temperature", 1.0,
        "--aoa", shared_data / "aoa" / "kuperman_2012_aoa.csv",
        "--cdi", shared_data / "aoa" / "babylm_cdi_aoa_word_list.csv")])
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())["tasks"]["generation"]
    m = result["metrics"]
    names = ("n_replies", "words_per_reply", "mlu_words", "type_token_ratio", "distinct_1", "distinct_2",
             "template_share", "echo_rate", "mean_aoa_years", "unrated_word_share", "cdi_word_share",
             "empty_or_unfinished_share")
    for who in ("model", "children"):
        for name in names:
            assert math.isfinite(m[f"{who}/{name}"]), f"{who}/{name}"
    assert m["model/n_replies"] == 6 and m["children/n_replies"] == 6 and m["n_replies"] == 12
    assert "words_per_reply" in m and "bleu1_to_gold" in m  # the earlier generation metrics are still there
    golds = [json.loads(line)["gold"] for line in (out / "generations.jsonl").read_text().splitlines()][::2]
    assert m["children/distinct_2"] == rc.distinct_n(golds, 2)
    assert m["children/words_per_reply"] == rc.words_per_reply(golds)
    assert "RM-1 and RM-2 skipped" in printed and "; children: distinct-2" in printed
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "generation_lengths.png").is_file() == has_matplotlib
    assert ("histogram skipped" in printed) == (not has_matplotlib)
    eval_script.main(["--compare", str(out)])
    table = capsys.readouterr().out
    assert f"| generation: children/template_share | {m['children/template_share']:.3f} |" in table
    assert f"| generation: model/distinct_2 | {m['model/distinct_2']:.3f} |" in table
