"""Rewards against hand-computed values: BLEU-1, length (both forms), clarity, age labels, the weighted
combination, references, coherence min-max, similarity arithmetic; and clear errors."""
import json
import math

import pytest
import torch

from minitoddler.rewards import build_reward, parse_spec
from minitoddler.rewards.bert import Bert, BertConfig, train_wordpiece
from minitoddler.rewards.bleu import BleuReward, bleu1
from minitoddler.rewards.childlike import age_label, childes_examples
from minitoddler.rewards.clarity import ClarityScorer, heuristic_clarity, main as clarity_main, top_prompts
from minitoddler.rewards.coherence import CoherenceReward, read_pairs
from minitoddler.rewards.length import LengthModel, main as length_main, punctuation_count, word_count
from minitoddler.rewards.references import load_references, prompt_key
from minitoddler.rewards.similarity import SimilarityReward


@pytest.fixture
def refs_file(tmp_path):
    path = tmp_path / "refs.jsonl"
    rows = [{"prompt": "*MOT: do you want juice ?", "answers": ["i want juice", "juice please"]},
            {"prompt": "where is the dog ?", "teacher_responses": ["the big dog"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_bert(texts, num_labels=0, seed=0):
    tok = train_wordpiece(texts, vocab_size=120)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=96)
    return Bert(cfg, tok, 96, num_labels=num_labels).eval()


# --- BLEU-1 ----------------------------------------------------------------------------------------
def test_bleu1_hand_values():
    # "the cat" vs "the cat is here": precision 2/2, brevity penalty exp(1 - 4/2).
    assert bleu1("the cat is here", "The cat!") == pytest.approx(math.exp(-1))
    # clipped counts: "juice" appears once in the reference, so 1 of 4 hypothesis words; no brevity penalty.
    assert bleu1("i want juice", "no juice juice please") == pytest.approx(0.25)
    assert bleu1("Can't you?", "cant you") == pytest.approx(1.0)  # punctuation deleted, lower-cased
    assert bleu1("yes", "no") == 0.0 and bleu1("yes", "") == 0.0 and bleu1("...", "yes") == 0.0


def test_bleu_reward_averages_over_teacher_answers(refs_file):
    refs = load_references(refs_file)
    got = BleuReward(refs).score(["do you want juice ?", "*MOT: where is the  dog ?"], ["juice please", "a dog"])
    # reply 1: vs "i want juice" p = 1/2, BP = exp(1 - 3/2); vs "juice please" 1.0. reply 2: p = 1/2, BP = exp(-1/2).
    assert got.tolist() == pytest.approx([(0.5 * math.exp(-0.5) + 1.0) / 2, 0.5 * math.exp(-0.5)])
    with pytest.raises(KeyError, match="no teacher answers"):
        BleuReward(refs).score(["an unknown prompt"], ["yes"])


def test_references_errors(tmp_path):
    assert prompt_key("*MOT:\tdo  you\nwant it ?") == "do you want it ?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answers": ["x"]}\n\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: expected an object"):
        load_references(bad)
    bad.write_text('{"prompt": "a", "answers": ["x"]}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_references(bad)
    good = tmp_path / "list.json"
    good.write_text(json.dumps([{"prompt": "a", "answers": ["x", "y"]}]))
    assert load_references(good) == {"a": ["x", "y"]}
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        load_references(tmp_path / "missing.json")


# --- RM-3 length -----------------------------------------------------------------------------------
def test_word_and_punctuation_counts():
    assert word_count("can't find it .") == 3 and punctuation_count("can't find it .") == 1
    assert word_count("yes. no! go, now?") == 4 and punctuation_count("yes. no! go, now?") == 4
    assert word_count("") == 0 and word_count(" ... ") == 0


def test_split_gaussian_hand_values(tmp_path):
    m = LengthModel.fit([1, 2, 2, 3, 5, 0], "split_gaussian")  # the 0 is ignored
    # median 2; left: (1-2)^2, 0, 0 -> 1/3, floored to 0.5; right: 0, 0, 1, 9 -> 2.5
    assert (m.median, m.left_variance, m.right_variance) == (2, 0.5, 2.5)
    assert m.score_text("i want it") == pytest.approx(math.exp(-1 / 5))
    assert m.score_text("no.") == pytest.approx(math.exp(-1 / 1))
    assert m.score_text("yes. no! go.") == pytest.approx(math.exp(-1 / 5) / 3)  # 3 words, 3 marks
    assert m.score_text("more juice") == pytest.approx(1.0) and m.score_text("") == 0.0
    hot = LengthModel.fit([1, 2, 2, 3, 5], "split_gaussian", temperature=2.0)
    s = math.exp(-1 / 5)
    assert hot.score_text("i want it") == pytest.approx(s * 2 ** (1 - s))
    again = LengthModel.load(m.save(tmp_path / "len.json"))
    assert again.score_text("yes. no! go.") == m.score_text("yes. no! go.")


def test_pmf_hand_values(tmp_path):
    m = LengthModel.fit([1, 1, 1, 2, 2, 3], "pmf", alpha=1.0)
    # p = (3+1, 2+1, 1+1) / (6 + 3) -> min-max over lengths 1..3: 1, 0.5, 0; longer than seen: 0
    assert [m.length_score(n) for n in range(5)] == pytest.approx([0, 1, 0.5, 0, 0])
    warm = LengthModel.fit([1, 1, 1, 2, 2, 3], "pmf", temperature=2.0, alpha=1.0)
    q = [math.sqrt(x / 9) for x in (4, 3, 2)]
    assert warm.length_score(2) == pytest.approx((q[1] - q[2]) / (q[0] - q[2]))
    assert warm.score_text("hi there, you") == pytest.approx(warm.length_score(3) / 1)
    assert LengthModel.load(m.save(tmp_path / "pmf.json")).length_score(2) == pytest.approx(0.5)


def test_length_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m minitoddler.rewards.length"):
        LengthModel.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"form": "gauss"}')
    with pytest.raises(ValueError, match="unknown length form 'gauss'"):
        LengthModel.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no non-empty utterances"):
        LengthModel.fit([0, 0])


def test_length_fit_command_on_childes(shared_data, tmp_path, capsys):
    out = tmp_path / "len.json"
    length_main(["--data", str(shared_data / "childes/brown-eve/eve01.cha"), "--out", str(out)])
    m = LengthModel.load(out)
    assert m.form == "split_gaussian" and 1 <= m.median <= 3  # Eve at 1;6 speaks in one- and two-word lines
    assert "wrote" in capsys.readouterr().out


# --- RM-1 labels, RM-4 clarity -------------------------------------------------------------------
def test_age_labels_piecewise_linear():
    got = [age_label(a) for a in (6, 12, 23.5, 35, 35.5, 36, 54, 72, 120)]
    assert got == pytest.approx([1.0, 1.0, 0.875, 0.75, 0.5, 0.25, 0.125, 0.0, 0.0])


def test_childes_examples_label_by_age_and_adults(shared_data):
    eve01 = shared_data / "childes/brown-eve/eve01.cha"
    rows = childes_examples([eve01])
    children = [y for y, adult in zip(rows.labels, rows.adult) if not adult]
    assert len(children) > 100 and rows.skipped == 0
    assert children == pytest.approx([1.0 - 0.25 * 6 / 23] * len(children))  # Eve is 1;6 in the first transcript
    # Eve's mother and the investigators said more than Eve: ratio 1 keeps as many adults as child rows.
    assert rows.adults_available > len(children) and sum(rows.adult) == len(children)
    assert all(y == 0.0 for y, adult in zip(rows.labels, rows.adult) if adult)
    assert sum(childes_examples([eve01], adult_ratio=0.5).adult) == round(0.5 * len(children))
    assert sum(childes_examples([eve01], adult_ratio=0).adult) == 0
    assert sum(childes_examples([eve01], adult_ratio=100).adult) == rows.adults_available


CHA = """@UTF8
@Begin
@Languages:\teng
@Participants:\tCHI Ann Target_Child, MOT Mary Mother, SIS Sue Sister, ENV Environment, INV Ian Investigator
@ID:\teng|test|CHI|2;0.|female|||Target_Child|||
@ID:\teng|test|MOT|||||Mother|||
@ID:\teng|test|SIS|||||Sister|||
@ID:\teng|test|ENV|||||Environment|||
@ID:\teng|test|INV|||||Investigator|||
*MOT:\tdo you want juice ?
*CHI:\tjuice !
*SIS:\tI want juice too .
*ENV:\tdoorbell .
*CHI:\tmore .
*INV:\tshe is hungry .
*MOT:\there you are .
*CHI:\txxx .
@End
"""


def test_childes_examples_rows_of_a_hand_written_transcript(tmp_path):
    path = tmp_path / "ann.cha"
    path.write_text(CHA)
    rows = childes_examples([path], adult_ratio=100)
    # Ann (2;0 = 24 months: label 1 - 0.25 * 12/23) said two words-bearing things; "xxx" is empty after
    # cleaning. Mother and investigator are adults; the sister and the environment are neither.
    assert rows.texts == ["juice!", "more.", "do you want juice?", "she is hungry.", "here you are."]
    assert rows.labels == pytest.approx([1 - 0.25 * 12 / 23] * 2 + [0.0] * 3)
    assert rows.adult == [False, False, True, True, True] and rows.ages == [24.0, 24.0, None, None, None]
    assert rows.groups == [str(path)] * 5 and rows.adults_available == 3 and rows.skipped == 0
    assert rows.auc_classes() == [1, 1, 0, 0, 0]
    picked = [childes_examples([path], adult_ratio=0.5, seed=s).texts for s in range(20)]
    assert all(len(t) == 3 and t[:2] == ["juice!", "more."] for t in picked)  # round(0.5 * 2) = 1 adult
    assert len({t[2] for t in picked}) == 3  # drawn at random: each adult line turns up over 20 seeds
    assert childes_examples([path], adult_ratio=0.5, seed=3).texts == picked[3]
    with pytest.raises(ValueError, match="adult_ratio"):
        childes_examples([path], adult_ratio=-1)


def test_clarity_heuristic_and_top_fraction(tmp_path):
    assert heuristic_clarity("do you want some juice?") == 1.0
    assert heuristic_clarity("do you want some juice.") == pytest.approx(0.6)
    assert heuristic_clarity("juice?") == pytest.approx(1 / 3)
    assert heuristic_clarity("xxx want juice?") == pytest.approx(2 / 3)
    assert heuristic_clarity(" ".join(["word"] * 20) + "?") == pytest.approx(0.5)
    prompts = [f"do you see the number {i} ?" for i in range(18)] + ["ok .", "OK  .", "what is that?"]
    kept = top_prompts(prompts, ClarityScorer(), keep=0.1)  # 20 unique prompts -> 2
    assert [p for p, _ in kept] == ["do you see the number 0 ?", "do you see the number 1 ?"]
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(prompts) + "\n")
    clarity_main(["--data", str(data), "--out", str(tmp_path / "kept.txt"), "--keep", "0.5"])
    assert len((tmp_path / "kept.txt").read_text().splitlines()) == 10


# --- RM-2 pairs and min-max ------------------------------------------------------------------------
def test_read_pairs_real_ppo_file(shared_data, tmp_path):
    prompts, replies, labels = read_pairs(shared_data / "ppo/responses_with_scores.csv")
    assert len(prompts) == 5846 and (prompts[0], replies[0], labels[0]) == (
        "put them on the wall and then it's time for you to be clean .", "can't find it .", pytest.approx(0.4))
    bad = tmp_path / "bad.csv"
    bad.write_text("Mother Prompt,Child Response,Extracted Score\nhi,yes,3\nhi,no,7\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: Extracted Score / 5.0 = 1.4 is outside"):
        read_pairs(bad)
    bad.write_text("prompt,reply\nhi,yes\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: missing column\(s\) \['Mother Prompt'"):
        read_pairs(bad)


def test_coherence_minmax_arithmetic():
    model = tiny_bert(["do you want juice", "yes please", "no"], num_labels=1)
    raw = CoherenceReward(model).score(["do you want juice", "do you want juice"], ["yes please", "no"])
    norm = CoherenceReward(model, (0.25, 0.75)).score(["do you want juice", "do you want juice"], ["yes please", "no"])
    assert torch.allclose(norm, (raw - 0.25) / 0.5)
    assert model.max_length == 96
    with pytest.raises(ValueError, match="lo < hi"):
        CoherenceReward(model, (0.5, 0.5))


def test_similarity_is_mean_cosine(refs_file):
    refs = load_references(refs_file)
    enc = tiny_bert(["i want juice", "juice please", "the big dog", "a dog", "juice"])
    got = SimilarityReward(enc, refs).score(["do you want juice ?", "where is the dog ?"], ["juice", "the big dog"])
    e = enc.embed(["juice", "i want juice", "juice please", "the big dog"])
    assert got[0] == pytest.approx(float((e[0] @ e[1] + e[0] @ e[2]) / 2), abs=1e-6)
    assert got[1] == pytest.approx(1.0, abs=1e-6)  # identical to the only reference


# --- the combination ---------------------------------------------------------------------------------
def test_combination_arithmetic_and_metrics(tmp_path, refs_file):
    fit = LengthModel.fit([1, 2, 2, 3, 5]).save(tmp_path / "len.json")
    reward = build_reward("length:0.5,bleu:2,clarity", {"length_fit": str(fit), "references": str(refs_file)})
    prompts, replies = ["do you want juice ?", "where is the dog ?"], ["juice please", "a dog."]
    parts = reward.components(prompts, replies)
    length = [math.exp(-0 / 5), math.exp(-0 / 5) / 1]  # both 2 words = the median
    bleu = [(0.5 * math.exp(-0.5) + 1.0) / 2, 0.5 * math.exp(-0.5)]
    clarity = [1.0, 1.0]  # 5 and 4 words, questions
    expected = [0.5 * length[i] + 2 * bleu[i] + 1.0 * clarity[i] for i in range(2)]
    assert reward.score(prompts, replies).tolist() == pytest.approx(expected)
    assert parts["bleu"].tolist() == pytest.approx(bleu)
    m = reward.metrics(parts)
    assert m["reward/total"] == pytest.approx(sum(expected) / 2) and m["reward/length"] == pytest.approx(1.0)


def test_spec_and_option_errors(tmp_path):
    assert parse_spec("childlike:1.0,coherence:0.2,length") == [("childlike", 1.0), ("coherence", 0.2), ("length", 1.0)]
    with pytest.raises(ValueError, match="unknown reward 'fun'"):
        parse_spec("childlike,fun:2")
    with pytest.raises(ValueError, match="not a number: 'x'"):
        parse_spec("childlike:x")
    with pytest.raises(ValueError, match="appears twice"):
        parse_spec("length,length:2")
    with pytest.raises(ValueError, match="reward 'childlike' needs option 'childlike_model'"):
        build_reward("childlike", {})
    with pytest.raises(ValueError, match=r"unknown reward option\(s\) \['childlike_modle'\]"):
        build_reward("childlike", {"childlike_modle": "x"})
    with pytest.raises(Exception, match="config.json not found"):
        build_reward("coherence", {"coherence_model": str(tmp_path)})
