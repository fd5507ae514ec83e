"""Minimal-pair scoring against a hand computation on a tiny random model: explicit log-softmax loops over
the vocabulary, one unpadded sentence at a time, for the BOS and minicons conventions, dialogue
conditioning, the beginning-of-word correction and tie handling."""
import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from minitoddler.config import ModelConfig
from minitoddler.evals.minimal_pairs import (Pair, accuracy_table, bow_token_mask, encode, evaluate_pairs,
                                             length_buckets, read_zorro, score_continuations, score_pairs)
from minitoddler.model import ToddlerLM

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    """A small byte-level BPE like the project's (lower-casing, 'Ġ' word marks), trained on real eval text."""
    texts = [line for f in sorted((shared_data / "eval" / "zorro").glob("*.txt"))[:4]
             for line in f.read_text().splitlines()[:400]]
    dialogue = json.loads((shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json").read_text())
    texts += [f"{d['prompt']}\n{d['chosen']}" for d in dialogue[:300]]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    return ToddlerLM(cfg).eval()


def hand_rows(model, seq):
    """Per position t: (list of log-probs over the vocabulary for the token after t), by explicit loops."""
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0].tolist()
    rows = []
    for row in logits:
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        rows.append([x - lse for x in row])
    return rows


def hand_score(model, prefix, scored, bow=None):
    """Sum of log p(token) over the scored tokens (the first token of a sequence is never scored); with
    `bow` (a set of word-initial ids), the beginning-of-word correction spelled out: the first scored
    token pays nothing for starting a word (no scored word before it did), as minicons does; the test
    against minicons itself is test_minicons_convention_reproduces_minicons."""
    seq = prefix + scored
    rows = hand_rows(model, seq)
    first = max(len(prefix), 1)
    total = 0.0
    for t in range(first, len(seq)):
        total += rows[t - 1][seq[t]]
        if bow is not None:
            p_bow_after = math.log(sum(math.exp(rows[t][b]) for b in bow))  # a new word starts after t
            p_bow_here = math.log(sum(math.exp(rows[t - 1][b]) for b in bow))  # a new word starts at t
            if t == len(seq) - 1 or seq[t + 1] in bow:
                total += p_bow_after
            if t > first and seq[t] in bow:
                total -= p_bow_here
    return total


SENTENCES = ["look at this purple thing .", "the lie on the foot is flat .", "where does the horse go ?",
             "this color must be white .", "what", "a dog .", "the books that you like is poor ."]


def test_conventions_match_hand_computation(model, tokenizer):
    pairs = [Pair("p", SENTENCES[i], SENTENCES[i + 1]) for i in range(0, 6, 2)]
    for convention in ("bos", "minicons"):
        good, bad = score_pairs(model, tokenizer, pairs, convention, max_tokens=40)
        for pair, g, b in zip(pairs, good.tolist(), bad.tolist()):
            for text, got in ((pair.good, g), (pair.bad, b)):
                ids = tokenizer.encode(text, add_special_tokens=False).ids
                prefix = [0] if convention == "bos" else []
                assert got == pytest.approx(hand_score(model, prefix, ids), abs=1e-4)
    # minicons leaves the first token unscored: a one-token sentence scores 0; with BOS it does not.
    assert len(tokenizer.encode("a", add_special_tokens=False).ids) == 1
    one = [Pair("p", "a", "a")]
    assert score_pairs(model, tokenizer, one, "minicons")[0].item() == 0.0
    assert score_pairs(model, tokenizer, one, "bos")[0].item() < -0.1


def test_batched_buckets_match_unbatched(model, tokenizer):
    enc = [encode(tokenizer, s, "", "bos", 0) for s in SENTENCES]
    lengths = [len(p) + len(c) for p, c in enc]
    buckets = length_buckets(lengths, max_tokens=24)
    assert sorted(i for b in buckets for i in b) == list(range(len(SENTENCES))) and len(buckets) > 1
    assert all(len(b) * max(lengths[i] for i in b) <= 24 or len(b) == 1 for b in buckets)
    scores = score_continuations(model, [p for p, _ in enc], [c for _, c in enc], max_tokens=24)
    for (p, c), s in zip(enc, scores.tolist()):
        assert s == pytest.approx(hand_score(model, p, c), abs=1e-4)


def test_dialogue_scores_the_reply_given_the_caregiver_line(model, tokenizer):
    context, reply = "*MOT: what is that ?", "*CHI: a dog ."
    for convention, joiner in (("bos", "\n"), ("minicons", " ")):
        prefix, scored = encode(tokenizer, reply, context, convention, 0)
        assert tokenizer.decode(prefix, skip_special_tokens=True) == context.lower()
        assert tokenizer.decode(scored) == (joiner + reply).lower()
        assert prefix + scored == ([0] if convention == "bos" else []) + \
            tokenizer.encode(context + joiner + reply, add_special_tokens=False).ids
        pair = Pair("d", reply, "*CHI: no .", context=context)
        good, _ = score_pairs(model, tokenizer, [pair], convention)
        assert good.item() == pytest.approx(hand_score(model, prefix, scored), abs=1e-4)
    other = score_pairs(model, tokenizer, [Pair("d", reply, reply, context="*MOT: look !")], "bos")[0].item()
    assert other != pytest.approx(good.item(), abs=1e-3)  # the caregiver line conditions the reply


def test_ties_count_as_wrong(model, tokenizer):
    a, b = "the dog runs .", "the dog run ."
    pairs = [Pair("same", a, a), Pair("case", "The Dog runs .", a),  # lower-cased by the tokenizer: identical ids
             Pair("swap", a, b), Pair("swap", b, a)]
    good, bad = score_pairs(model, tokenizer, pairs)
    assert good[0] == bad[0] and good[1] == bad[1]
    table = accuracy_table(pairs, good, bad)
    assert table["paradigms"]["same"] == {"n": 1, "correct": 0, "ties": 1, "accuracy": 0.0}
    assert table["paradigms"]["case"]["correct"] == 0
    assert table["paradigms"]["swap"]["correct"] == 1  # exactly one order is right
    assert table["ties"] == 2
    assert table["micro_accuracy"] == pytest.approx(1 / 4)
    assert table["macro_accuracy"] == pytest.approx((0 + 0 + 0.5) / 3)


def test_accuracy_table_by_hand():
    pairs = [Pair("a", "x", "y")] * 3 + [Pair("b", "x", "y")]
    good, bad = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([0.0, -1.0, 0.5, 2.0])
    t = accuracy_table(pairs, good, bad)
    assert t["paradigms"]["a"] == {"n": 3, "correct": 1, "ties": 1, "accuracy": pytest.approx(1 / 3)}
    assert t["macro_accuracy"] == pytest.approx((1 / 3 + 1) / 2) and t["micro_accuracy"] == pytest.approx(0.5)


def test_bow_correction_matches_hand_computation(model, tokenizer):
    mask = bow_token_mask(tokenizer, model.cfg.vocab_size)
    bow = {i for t, i in tokenizer.get_vocab().items() if t.startswith("Ġ")}
    assert set(mask.nonzero().flatten().tolist()) == bow and len(bow) > 20
    pairs = [Pair("p", SENTENCES[0], SENTENCES[1]), Pair("d", "*CHI: a dog .", "*CHI: no .", context="*MOT: hi !")]
    for convention in ("minicons", "bos"):
        good, bad = score_pairs(model, tokenizer, pairs, convention, bow_correction=True, max_tokens=30)
        plain, _ = score_pairs(model, tokenizer, pairs, convention)
        for pair, g, b in zip(pairs, good.tolist(), bad.tolist()):
            for text, got in ((pair.good, g), (pair.bad, b)):
                prefix, scored = encode(tokenizer, text, pair.context, convention, 0)
                assert got == pytest.approx(hand_score(model, prefix, scored, bow), abs=1e-4)
        assert not torch.allclose(good, plain)  # the correction changes scores


def test_bow_correction_needs_word_marks():
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "dog": 1, "a": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="marks no word beginnings"):
        bow_token_mask(tok, 3)


def test_random_model_is_near_chance_on_zorro(model, tokenizer, shared_data):
    pairs = [p for f in sorted((shared_data / "eval" / "zorro").glob("*.txt"))[:6] for p in read_zorro(f)[:100]]
    results, rows = evaluate_pairs(model, tokenizer, pairs)
    assert results["n_pairs"] == 600 and len(rows) == 600 and len(results["paradigms"]) == 6
    assert 0.35 < results["macro_accuracy"] < 0.65


def test_minicons_convention_reproduces_minicons(tokenizer, shared_data, tmp_path):
    """`--convention minicons` against minicons itself (its IncrementalLMScorer on transformers' Llama,
    loading the same directory): BLiMP and Zorro sentences (`sequence_score`) and dialogue replies given
    the caregiver line (`conditional_score`, separator " "), with and without the correction."""
    from minicons import scorer

    from minitoddler.checkpoint import load_model, save_model
    from minitoddler.tokenizer import load_tokenizer, train_tokenizer

    zorro = read_zorro(shared_data / "eval" / "zorro" / "npi_licensing-matrix_question.txt")[:6]
    blimp = [json.loads(l) for l in (shared_data / "eval" / "blimp" / "anaphor_gender_agreement.jsonl")
             .read_text().splitlines()[:6]]
    dialogue = json.loads((shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json").read_text())
    sentences = [p.good for p in zorro] + [p.bad for p in zorro] + \
        [b["sentence_good"] for b in blimp] + [b["sentence_bad"] for b in blimp]
    dialogue = dialogue[:8]
    texts = sentences + [f"{d['prompt']} {d['chosen']} {d['rejected']}" for d in dialogue]
    train_tokenizer(texts * 3, tmp_path / "tok", vocab_size=400)
    tok = load_tokenizer(tmp_path / "tok")
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=3)
    save_model(ToddlerLM(cfg).eval(), tmp_path / "m", tokenizer=tmp_path / "tok")
    ours = load_model(tmp_path / "m")
    reference = scorer.IncrementalLMScorer(str(tmp_path / "m"), device="cpu")
    total = lambda x: x.sum(0).item()  # noqa: E731  (minicons' reduction: summed log-probability)

    sentence_pairs = [Pair("s", a, b) for a, b in zip(sentences[0::2], sentences[1::2])]
    dialogue_pairs = [Pair("d", d["chosen"], d["rejected"], context=d["prompt"]) for d in dialogue]
    for bow in (False, True):
        want = reference.sequence_score(sentences, reduction=total, bow_correction=bow)
        good, bad = score_pairs(ours, tok, sentence_pairs, "minicons", bow_correction=bow)
        assert torch.stack((good, bad), 1).flatten().tolist() == pytest.approx(want, abs=2e-4)
        prompts = [d["prompt"] for d in dialogue]
        want_good = reference.conditional_score(prompts, [d["chosen"] for d in dialogue], reduction=total,
                                                bow_correction=bow)
        want_bad = reference.conditional_score(prompts, [d["rejected"] for d in dialogue], reduction=total,
                                               bow_correction=bow)
        good, bad = score_pairs(ours, tok, dialogue_pairs, "minicons", bow_correction=bow)
        assert good.tolist() == pytest.approx(want_good, abs=2e-4)
        assert bad.tolist() == pytest.approx(want_bad, abs=2e-4)
    # The correction is not a no-op on these pairs, and the first reply token (" *") begins a word:
    # the case where a "correct every word-initial token" rule would differ from minicons.
    assert tok.id_to_token(tok.encode(dialogue[0]["prompt"] + " " + dialogue[0]["chosen"]).ids[
        len(tok.encode(dialogue[0]["prompt"]).ids)]).startswith("Ġ")
    assert not torch.allclose(good, score_pairs(ours, tok, dialogue_pairs, "minicons")[0], atol=0.1)
