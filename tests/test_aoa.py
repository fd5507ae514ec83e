"""eval.py --task aoa (minitoddler/evals/aoa.py) against independent computations: the sigmoid fits against
scipy.optimize.curve_fit as the BabyLM pipeline calls it (../shared/data/babylm/SCORING.md), the AoA thresholds
by hand, the surprisals against transformers' Llama and tokenizer scoring one text at a time as the pipeline's
`AoA_word/evaluation_functions.py` does, the readers on small files in the official formats, a tiny run with 3
checkpoints end to end (alone and in --suite babylm), and bad input ending in one line with status 2."""
import json
import math
import re
import sys

import numpy as np
import pytest
import torch

from minitoddler import cli
from minitoddler.checkpoint import load_model, save_model
from minitoddler.config import ModelConfig
from minitoddler.evals import aoa, trajectory
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer
from scripts import load_script

eval_script = load_script("eval")
MARKS = [n * 10**6 for n in range(1, 10)] + [n * 10**7 for n in range(1, 11)]  # BabyLM strict-small
AGES = np.arange(16, 31)
# The run's words, how often the training text holds each (so the model learns them in this order), and the
# month children reach 50% on each in the CDI file written below.
WORDS = {"kitty": (24, 18.0), "doggy": (12, 20.0), "bunny": (6, 22.0), "teddy": (3, 25.0), "ducky": (2, 27.0)}
FRAMES = ("look at the {}.", "where is the {}?", "i see a {}.", "give me the {}!")


# --- the fits against scipy ---------------------------------------------------------------------------
def scipy_model_fit(x, y):
    """The pipeline's model-side fit: curve_fit, Levenberg-Marquardt, maxfev 1000 (None where it raises)."""
    from scipy.optimize import curve_fit
    try:
        return curve_fit(aoa.sigmoid, x, y, p0=[y.max() - y.min(), 1.0, x.mean(), y.min()], maxfev=1000)[0]
    except (RuntimeError, TypeError):
        return None


def scipy_child_aoa(props):
    """The pipeline's children's AoA, with scipy: bounded curve_fit, then f = 0.5 solved inside 16..30."""
    from scipy.optimize import curve_fit
    try:
        a, b, c, d = curve_fit(aoa.sigmoid, AGES, props, p0=[1.0, 0.1, AGES.mean(), 0.0], maxfev=1000,
                               bounds=([0, 0, 16, -0.5], [2.0, 1.0, 30, 0.5]))[0]
    except RuntimeError:
        return None
    if b <= 0 or a <= 0 or not d < 0.5 < a + d:
        return None
    x = c - np.log(a / (0.5 - d) - 1) / b
    return x if 16 <= x <= 30 else None


def model_curves(seed, n):
    """Noisy -surprisal points of learning curves over the strict-small checkpoints, 6 contexts each."""
    rng = np.random.default_rng(seed)
    x = np.repeat(np.log10(np.array(MARKS) + 1.0), 6)
    for _ in range(n):
        high, drop, mid, slope = rng.uniform(12, 22), rng.uniform(3, 10), rng.uniform(6.3, 7.7), rng.uniform(1, 4)
        yield x, -(high - drop / (1 + np.exp(-slope * (x - mid)))) + rng.normal(0, 0.3, len(x))


def test_unbounded_fit_matches_curve_fit():
    """The model-side fit: MINPACK's algorithm step for step, so the same parameters (to its tolerance)."""
    for x, y in model_curves(0, 25):
        ours, ref = aoa.fit_sigmoid(x, y, [y.max() - y.min(), 1.0, x.mean(), y.min()]), scipy_model_fit(x, y)
        assert ref is not None and ours is not None
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
    flat = np.full(12, -9.0) + np.tile([0.0, 1e-3], 6)  # no sigmoid in sight: both give up or agree
    ours, ref = aoa.fit_sigmoid(np.arange(12.0), flat, [1e-3, 1.0, 5.5, -9.0]), scipy_model_fit(np.arange(12.0), flat)
    assert (ours is None) == (ref is None)
    assert aoa.fit_sigmoid(np.arange(3.0), np.ones(3), [1, 1, 1, 0]) is None  # fewer points than parameters


def test_bounded_fit_matches_curve_fit(shared_data):
    """Children's AoA on synthetic curves (bounds active: a word known at 16 months, one steeper than b = 1,
    one never reaching 50%) and on the real Wordbank proportions, against scipy's bounded curve_fit."""
    rng = np.random.default_rng(1)
    curves = [1 / (1 + np.exp(-b * (AGES - c))) * a + d + rng.normal(0, 0.02, len(AGES))
              for a, b, c, d in [(0.9, 0.4, 21, 0.02), (1.0, 0.3, 25, 0.0), (0.8, 0.5, 14, 0.1), (1.0, 2.5, 22, 0.0),
                                 (0.4, 0.5, 24, 0.0), (1.0, 0.2, 29, 0.0), (1.0, 0.6, 17, 0.0)]]
    children = aoa.read_children(shared_data / "babylm/aoa/wordbank_ws_american_english_proportions.csv")
    curves += list(children.curves.values())[::6]  # 114 real words, from every part of the form
    got, want = [aoa.child_aoa(AGES, c) for c in curves], [scipy_child_aoa(c) for c in curves]
    assert [g is None for g in got] == [w is None for w in want]
    assert sum(w is not None for w in want) > 80 and want[2] is None and want[4] is None
    np.testing.assert_allclose([g for g in got if g is not None], [w for w in want if w is not None], atol=2e-3)


# --- the thresholds, by hand ---------------------------------------------------------------------------
def test_thresholds_by_hand():
    assert aoa.crossing([2.0, 1.0, 20.0, -0.5], 0.5) == pytest.approx(20.0)           # 2/(1+e^0) - 0.5 = 0.5
    assert aoa.crossing([1.0, 0.5, 20.0, 0.0], 0.25) == pytest.approx(20 - 2 * math.log(3))  # 1/(1+e^(-0.5 t)) = 1/4
    assert aoa.crossing([1.0, 0.5, 20.0, 0.0], 1.0) is None and aoa.crossing([1.0, -0.5, 20.0, 0.0], 0.5) is None
    assert aoa.crossing([-1.0, 0.5, 20.0, 0.5], 0.2) is None
    # children: a noise-free curve reaching 50% at 22.5 months; one known by 16 months; one never reaching 50%
    assert aoa.child_aoa(AGES, 1 / (1 + np.exp(-0.5 * (AGES - 22.5)))) == pytest.approx(22.5, abs=1e-4)
    assert aoa.child_aoa(AGES, 0.6 + 0.02 * (AGES - 16)) is None
    assert aoa.child_aoa(AGES, 0.3 / (1 + np.exp(-0.5 * (AGES - 22.5)))) is None
    assert aoa.child_aoa([16, 17], [0.2, 0.8]) is None  # under 3 points
    # the model: surprisal falls from 20 to 5 nats, a / (1 + e^(-3 (x - 7))) + d with a = 15, d = -20 on -surprisal;
    # lowest surprisal s_min at 100M words; threshold (log2 300000 + s_min) / 2 bits-and-nats, as the pipeline
    x = np.log10(np.array(MARKS) + 1.0)
    s = 20 - 15 / (1 + np.exp(-3 * (x - 7)))
    threshold = (math.log2(300_000) + s.min()) / 2
    by_hand = 7 - math.log(15 / (-threshold + 20) - 1) / 3
    assert aoa.model_aoa(MARKS, s) == pytest.approx(by_hand, abs=1e-6)
    assert threshold == pytest.approx(11.953, abs=1e-3) and by_hand == pytest.approx(7.0487, abs=1e-4)
    assert aoa.model_aoa(np.repeat(MARKS, 2), np.repeat(s, 2)) == pytest.approx(by_hand, abs=1e-6)  # 2 contexts
    assert aoa.model_aoa(MARKS, 40 - 15 / (1 + np.exp(-3 * (x - 7)))) is None  # never below chance: no threshold
    late = 20 - 15 / (1 + np.exp(-3 * (x - 9.5)))  # the crossing lies past the last checkpoint
    assert aoa.model_aoa(MARKS, late) is None
    assert aoa.model_aoa(MARKS[:2], s[:2]) is None and aoa.model_aoa(MARKS[:3], s[:3]) is None
    with_gap = s.copy()
    with_gap[3] = np.nan  # a failed text is left out, as the pipeline leaves out NaN
    assert aoa.model_aoa(MARKS, with_gap) == pytest.approx(by_hand, abs=1e-4)


# --- the surprisals against transformers ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny model with a BPE tokenizer that splits words into several pieces."""
    texts = ["look at the kitty over there.", "where is your teddy bear?", "thank you very much!",
             "do you want the washing machine?", "i see a big doggy."] * 3
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, tok_dir, vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_tokenizer(tok_dir).get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2)
    out = tmp_path_factory.mktemp("model")
    save_model(ToddlerLM(cfg), out, tokenizer=tok_dir)
    return out


def pipeline_surprisal(hf, tok, context, word):
    """The pipeline's causal surprisal, step by step: context stripped plus one space, the word; offsets; the
    tokens ending after the context; the model run on all but the last token; -ln p of the masked targets."""
    context, word = context.strip() + " ", word.strip()
    text = context + word
    enc = tok(text, return_offsets_mapping=True)
    mask = [int(end > len(text) - len(word)) for _, end in enc["offset_mapping"]]
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids[:, :-1]).logits.double(), -1)
    target = logp.gather(-1, ids[:, 1:, None])[0, :, 0]
    return -float((target * torch.tensor(mask[1:])).sum())


def test_surprisal_matches_transformers(model_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs = [("kitty", "look at the"), ("teddy bear", "where is your "), ("thank you", "  oh, "),
             ("washing machine", "do you want the"), ("zebra", "i see a big"), ("doggy", "x")]
    want = [pipeline_surprisal(hf, tok, c, w) for w, c in pairs]
    got = aoa.surprisals(load_model(model_dir), load_tokenizer(model_dir, strict=False), pairs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert min(want) > 0 and len(tok(" zebra")["input_ids"]) > 1  # every word scored, multi-piece words too


# --- the readers -----------------------------------------------------------------------------------------
def test_readers_follow_the_official_formats(tmp_path):
    contexts = tmp_path / "cdi_childes.json"  # README.md: {word: [{"context": str, "word_in_context_stats": ...}]}
    contexts.write_text(json.dumps({"dog": [{"context": "I saw a", "word_in_context_stats": {"count": 3}},
                                            {"context": "the big", "word_in_context_stats": {"count": 1}}],
                                    "a": [{"context": "it is", "word_in_context_stats": {"count": 9}}],
                                    "thank you": [{"context": "say", "word_in_context_stats": {}}]}))
    assert aoa.read_contexts(contexts) == {"dog": ["I saw a", "the big"], "thank you": ["say"]}  # 1-letter words out
    human = tmp_path / "cdi_human.csv"
    human.write_text("word," + ",".join(map(str, AGES)) + "\n" + "dog," + ",".join(["0.5"] * 15) + "\n"
                     + "cat,0.1,,NA" + ",0.2" * 12 + "\n")
    got = aoa.read_children(human)
    assert got.ages == tuple(AGES) and list(got.curves) == ["dog", "cat"]
    assert np.isnan(got.curves["cat"][1:3]).all() and got.curves["cat"][0] == 0.1
    wordbank = tmp_path / "wordbank.csv"  # Wordbank's proportions, items cleaned as BabyLM's CDI word list
    wordbank.write_text('"num_item_id","definition","type","category","16","17"\n'
                        '1,"chicken (animal)","word","animals",0.1,0.2\n'
                        '2,"chicken (food)","word","food",0.9,0.9\n3,"soda/pop","word","food",0.3,0.4\n'
                        '4,"child\'s own name","word","people",0.5,0.5\n5,"TV","word","furniture",0.2,0.3\n'
                        '6,"don\'t","word","helping",0.1,0.1\n7,"buttocks/bottom*","word","body",0.1,0.2\n')
    got = aoa.read_children(wordbank)
    assert got.ages == (16, 17) and list(got.curves) == ["chicken", "soda", "pop", "tv", "don't", "buttocks", "bottom"]
    assert list(got.curves["chicken"]) == [0.1, 0.2] and got.get("dont") is got.curves["don't"] and got.get("x") is None


def test_contexts_built_from_a_prepared_corpus(tmp_path):
    cds = tmp_path / "cds"
    cds.mkdir()
    lines = ["look at the doggy.", "Look at the doggy!", "where is the doggy?", "doggy is here.", "say thank you.",
             "*MOT: a big doggy .", "see the dog.", "look at the doggy now."]
    (cds / "train.jsonl").write_text("".join(json.dumps({"text": t, "speaker": "MOT"}) + "\n" for t in lines))
    (cds / "extra.txt").write_text("oh the doggy\n")
    got = aoa.build_contexts([cds], ["doggy", "thank you", "dog", "zebra"], per_word=3)
    # utterance starts before the word, most frequent first, then in corpus order; the first word is no context
    assert got == {"doggy": ["look at the", "Look at the", "where is the"], "thank you": ["say"], "dog": ["see the"]}
    assert aoa.build_contexts([cds / "extra.txt"], ["doggy"]) == {"doggy": ["oh the"]}
    assert aoa.build_contexts([cds / "train.jsonl"], ["doggy"], per_word=10) == {  # the speaker tag dropped
        "doggy": ["look at the", "Look at the", "where is the", "a big"]}


# --- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A pretraining run as train_pretrain.py --save-at-words leaves it: checkpoints/chck_1M, chck_2M, chck_4M
    (save_words_checkpoint), a character-level tokenizer so the words start at ~25 nats, a model trained on
    text where the words come at different rates, so it learns them at different times."""
    root = tmp_path_factory.mktemp("aoa_run")
    lines = [f.format(w) for w, (n, _) in WORDS.items() for _ in range(n) for f in FRAMES]
    lines += ["what is that?", "come here.", "all done."] * 5
    (root / "cds").mkdir()
    (root / "cds" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    train_tokenizer(lines, root / "tok", vocab_size=260)
    tok = load_tokenizer(root / "tok")
    torch.manual_seed(0)
    model = ToddlerLM(ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=64))
    ids = [tok.encode(t).ids + [0] for t in lines]
    batch = torch.zeros((len(ids), max(map(len, ids))), dtype=torch.long)
    for i, s in enumerate(ids):
        batch[i, :len(s)] = torch.tensor(s)
    opt, g, step = torch.optim.AdamW(model.parameters(), lr=2e-2), torch.Generator().manual_seed(0), 0
    for until, words in ((1, 10**6), (10, 2 * 10**6), (40, 4 * 10**6)):
        for step in range(step, until):
            x = batch[torch.randint(len(ids), (16,), generator=g)]
            loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none")
            loss = (loss * (x[:, 1:] != 0)).sum() / (x[:, 1:] != 0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        step = until
        trajectory.save_words_checkpoint(model, root / "run", words, root / "tok", {"words_seen": words, "step": step})
    data = root / "full_eval" / "aoa"
    data.mkdir(parents=True)
    (data / "cdi_childes.json").write_text(json.dumps(
        {w: [{"context": c, "word_in_context_stats": {}} for c in ("look at the", "where is the", "i see a")]
         for w in [*WORDS, "zebra"]}))  # zebra: no children's data, left out
    (data / "cdi_human.csv").write_text("word," + ",".join(map(str, AGES)) + "\n" + "".join(
        f"{w}," + ",".join(f"{p:.6f}" for p in 1 / (1 + np.exp(-0.6 * (AGES - month)))) + "\n"
        for w, (_, month) in WORDS.items()))
    return root


def run(*args):
    eval_script.main([str(a) for a in args])


def test_eval_aoa_end_to_end(run_dir, tmp_path, capsys):
    from scipy.stats import pearsonr
    data = run_dir / "full_eval" / "aoa"
    run("--model", run_dir / "run", "--task", "aoa", "--data", data / "cdi_childes.json", data / "cdi_human.csv",
        "--device", "cpu", "--out", tmp_path / "a")
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "aoa.json").read_text())
    assert [c["checkpoint"] for c in result["checkpoints"]] == ["chck_1M", "chck_2M", "chck_4M"]
    rows = {r["word"]: r for r in result["words"]}
    assert list(rows) == list(WORDS) and all(r["contexts"] == 3 for r in rows.values())
    assert [round(rows[w]["child_aoa"], 3) for w in WORDS] == [m for _, m in WORDS.values()]
    assert all(r["surprisal"][0] > 20 > 12 > r["surprisal"][-1] for r in list(rows.values())[:3])  # learnt
    used = [r for r in rows.values() if r["used"]]
    assert len(used) >= 3 and math.isfinite(result["r"]) and result["score"] == result["r"]
    assert result["r"] == pytest.approx(pearsonr([r["model_aoa"] for r in used], [r["child_aoa"] for r in used])[0])
    assert all(6 <= r["model_aoa"] <= math.log10(4e6 + 1) for r in used)
    for word in WORDS:  # each word's points gathered here checkpoint by checkpoint, fitted as the pipeline fits
        points = [(words, s) for words, d in trajectory.find_checkpoints(run_dir / "run")
                  for s in aoa.surprisals(load_model(d), load_tokenizer(d, strict=False),
                                          [(word, c) for c in ("look at the", "where is the", "i see a")])]
        means = [np.mean([s for w, s in points if w == n]) for n in (1e6, 2e6, 4e6)]
        assert rows[word]["surprisal"] == pytest.approx(means)
        assert rows[word]["model_aoa"] == aoa.model_aoa(*zip(*points))
    assert f"Pearson r {result['r']:.3f}" in printed and "chck_2M (2,000,000 words): mean surprisal" in printed
    table = (tmp_path / "a" / "aoa.md").read_text()
    assert "| word | contexts | children's AoA (months) | model AoA (words) |" in table
    assert all(re.search(rf"^\| {w} \| 3 \| {m:.2f} \|", table, re.M) for w, (_, m) in WORDS.items())
    assert len((tmp_path / "a" / "aoa_words.tsv").read_text().splitlines()) == 1 + len(WORDS)
    top = json.loads((tmp_path / "a" / "results.json").read_text())
    assert top["aoa"]["score"] == result["score"] and top["aoa"]["n_words"] == len(used)
    assert top["table"]["AoA"] == result["score"]  # the paper table's AoA row
    assert re.search(rf"^\| AoA \| Pearson r \| {result['score']:.2f} \|$",
                     (tmp_path / "a" / "report.md").read_text(), re.M)
    # the same run with contexts built from its prepared corpus (the training text, every frame per word)
    run("--model", run_dir / "run", "--task", "aoa", "--data", data / "cdi_human.csv", "--contexts-from",
        run_dir / "cds", "--device", "cpu", "--out", tmp_path / "b")
    built = json.loads((tmp_path / "b" / "aoa.json").read_text())
    assert {r["word"]: r["contexts"] for r in built["words"]} == {w: 4 for w in WORDS}
    assert built["contexts"].endswith("(at most 20 per word)") and built["n_words"] >= 3


def test_suite_includes_aoa_when_its_data_is_there(run_dir, shared_data, tmp_path, capsys):
    full = run_dir / "full_eval"
    (full / "blimp_filtered").mkdir(exist_ok=True)
    lines = (shared_data / "babylm/fast_eval/blimp_fast/passive_1.jsonl").read_text().splitlines()[:2]
    (full / "blimp_filtered" / "passive_1.jsonl").write_text("\n".join(lines) + "\n")
    assert aoa.locate(full) == ([str(full / "aoa/cdi_childes.json"), str(full / "aoa/cdi_human.csv")], None)
    assert aoa.locate(shared_data / "babylm/fast_eval") == (None, None)  # the pipeline's fast suite has no AoA
    data, where = aoa.locate(shared_data / "babylm/full_eval")  # Wordbank beside it, no contexts
    assert data is None and "cdi_childes.json" in where and "--contexts-from" in where
    data, _ = aoa.locate(shared_data / "babylm/full_eval", [run_dir / "cds"])
    assert data == [str(shared_data / "babylm/aoa/wordbank_ws_american_english_proportions.csv")]
    run("--model", run_dir / "run", "--checkpoints", "--suite", "babylm", full, "--device", "cpu", "--out", tmp_path)
    top = json.loads((tmp_path / "results.json").read_text())
    assert [r["checkpoint"] for r in top["trajectory"]["blimp"]["rows"]] == ["chck_1M", "chck_2M", "chck_4M"]
    assert top["aoa"]["n_words_evaluated"] == len(WORDS) and (tmp_path / "aoa.md").is_file()
    assert "aoa: Pearson r" in capsys.readouterr().out


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/cdi_childes.json", "{aoa}/cdi_human.csv"],
     r"^error: {tmp}/cdi_childes.json not found: the AoA contexts are full_eval/aoa/cdi_childes.json in the official "
     r"pipeline's evaluation_data \(OSF https://osf.io/ryjfm/.*--contexts-from"),
    (["--data", "{aoa}/cdi_childes.json", "{tmp}/cdi_human.csv"],
     r"^error: {tmp}/cdi_human.csv not found: the children's AoA data is full_eval/aoa/cdi_human.csv in the official"),
    (["--data", "{tmp}/empty.json", "{aoa}/cdi_human.csv"], r"^error: {tmp}/empty.json: empty \(expected \{{word: "),
    (["--data", "{tmp}/list.json", "{aoa}/cdi_human.csv"],
     r"^error: {tmp}/list.json: expected a JSON object \{{word: \[\{{\"context\": ...\}}, ...\]\}} as in "
     r"cdi_childes.json, got a list"),
    (["--data", "{tmp}/bad.json", "{aoa}/cdi_human.csv"],
     r"^error: {tmp}/bad.json: word 'dog', entry 1: no \"context\" string"),
    (["--data", "{tmp}/broken.json", "{aoa}/cdi_human.csv"], r"^error: {tmp}/broken.json:2: not valid JSON"),
    (["--data", "{aoa}/cdi_childes.json", "{tmp}/empty.csv"], r"^error: {tmp}/empty.csv: empty \(expected a header"),
    (["--data", "{aoa}/cdi_childes.json", "{tmp}/blimp.csv"],
     r"^error: {tmp}/blimp.csv: not a children's AoA table: it needs a 'word' \(cdi_human.csv\) or 'definition'"),
    (["--data", "{aoa}/cdi_childes.json", "{tmp}/nan.csv"],
     r"^error: {tmp}/nan.csv:3: 'lots' in column 17 is not a number"),
    (["--data", "{aoa}/cdi_childes.json"], r"^error: --task aoa needs one children's AoA table with --data \(0 given"),
    (["--data", "{aoa}/cdi_human.csv"], r"^error: no contexts for --task aoa: full_eval/aoa/cdi_childes.json in"),
    (["--data", "{aoa}/cdi_human.csv", "--contexts-from", "{tmp}/cds"],
     r"^error: {tmp}/cds not found \(--contexts-from takes a prepared corpus such as prepared/cds"),
])
def test_bad_input_is_one_line_and_status_2(run_dir, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty.json").write_text("\n")
    (tmp_path / "list.json").write_text('[{"sentence_good": "a", "sentence_bad": "b"}]')
    (tmp_path / "bad.json").write_text(json.dumps({"dog": [{"context": "a"}, {"text": "b"}]}))
    (tmp_path / "broken.json").write_text('{"dog":\n [}')
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blimp.csv").write_text("sentence_good,sentence_bad\na,b\n")
    (tmp_path / "nan.csv").write_text("word,16,17\ndog,0.1,0.2\ncat,0.1,lots\n")
    fill = {"tmp": tmp_path, "aoa": run_dir / "full_eval" / "aoa"}
    args = [a.format(**fill) for a in args]
    monkeypatch.setattr(sys, "argv", ["eval.py", "--model", str(run_dir / "run"), "--task", "aoa", "--device", "cpu",
                                      "--out", str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run(eval_script.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert re.match(message.format(**{k: re.escape(str(v)) for k, v in fill.items()}), err[0]), err[0]
