"""BabyLM zero-shot tasks (--convention babylm) against an independent computation: transformers' Llama and
tokenizer loading the same exported directory, scored one text at a time as ../shared/data/babylm/SCORING.md
describes (offset mask, summed log-probs, ties to the first option, accuracy per UID), on small slices of the
real files; readers of the formats without a public copy (COMPS, wug past tense) on files written here."""
import json
import math
import zipfile

import pytest
import torch

from minitoddler.checkpoint import load_model, save_model
from minitoddler.config import ModelConfig
from minitoddler.evals import babylm, shared_prefix
from minitoddler.evals.ranking import ENTITY_TRACKING_SPLITS, Item, accuracy_by_uid, encode_items
from minitoddler.evals.sources import DataFile, data_files
from minitoddler.evals.zero_shot import read_items
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer

PASSWORD = "BabyLM2025"  # the zips' password, as the official pipeline's README gives it
SLICE = 4                # items per file


@pytest.fixture(scope="module")
def babylm_dir(shared_data):
    return shared_data / "babylm"


@pytest.fixture(scope="module")
def slices(babylm_dir):
    """{task: the first SLICE items of each file of a few real files}, through our own readers."""
    fast = babylm_dir / "fast_eval"
    specs = {"blimp": [fast / "blimp_fast" / f"{n}.jsonl" for n in ("adjunct_island", "passive_1", "wh_island")],
             "supplement": [fast / "supplement_fast" / "turn_taking.jsonl", fast / "supplement_fast" / "hypernym.jsonl"],
             "ewok": [f"{fast / 'ewok_fast.zip'}"],
             "entity_tracking": [f"{babylm_dir / 'entity_tracking.zip'}:fast_eval/entity_tracking_fast"],
             "wug_adj": [fast / "wug_adj_nominalization"]}
    out = {}
    for task, spec in specs.items():
        files = data_files(spec, task, password=PASSWORD)
        out[task] = [it for f in files for it in read_items(task, [f])[:SLICE if task != "wug_adj" else 40]]
    return out


@pytest.fixture(scope="module")
def model_dir(slices, tmp_path_factory):
    """A random tiny model whose context (64 tokens) is shorter than entity tracking's texts."""
    texts = [t for items in slices.values() for it in items for t in it.texts]
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts * 2, tok_dir, vocab_size=400)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_tokenizer(tok_dir).get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    out = tmp_path_factory.mktemp("model")
    save_model(ToddlerLM(cfg), out, tokenizer=tok_dir)
    return out


@pytest.fixture(scope="module")
def reference(model_dir):
    """transformers' model and tokenizer for the same directory, and SCORING.md's score of one text."""
    from transformers import AutoTokenizer, LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)

    def score(text, completion):
        enc = tok(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        start = len(text) - len(completion) + offsets[0][0]
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
        return sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)) if offsets[i][1] > start)
    return score


def by_hand(items, scores):
    """Accuracy per UID in %: the first option right when no other scores higher."""
    table = {}
    for it, s in zip(items, scores):
        n, c = table.get(it.uid, (0, 0))
        table[it.uid] = (n + 1, c + (s[0] >= max(s[1:])))
    return {uid: 100 * c / n for uid, (n, c) in table.items()}


@pytest.mark.parametrize("task", ["blimp", "supplement", "ewok", "entity_tracking"])
def test_accuracy_per_uid_matches_transformers(task, slices, model_dir, reference, monkeypatch):
    items = slices[task]
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    cached = []
    monkeypatch.setattr(shared_prefix, "score_cached", lambda *a, f=shared_prefix.score_cached: cached.append(1) or f(*a))
    monkeypatch.setattr(babylm, "read_items", lambda task_, files: items)  # these items, through evaluate()
    monkeypatch.setattr(babylm, "data_files", lambda *a: [])
    result, rows = babylm.evaluate(model, tok, task, ["unused"], max_tokens=300)
    want = [[reference(t, c) for t, c in zip(it.texts, it.completions)] for it in items]
    assert [r["logprobs"] for r in rows] == [pytest.approx(w, abs=2e-4) for w in want]
    expected = by_hand(items, want)
    assert {uid: row["percent"] for uid, row in result["uids"].items()} == pytest.approx(expected)
    # the mean over UIDs (entity tracking: over numops within a file, then over files; one file here)
    assert result["score"] == pytest.approx(sum(expected.values()) / len(expected))
    if task == "entity_tracking":  # past the 64-token context, through the shared-prefix path
        assert result["beyond_context"] > 0 and cached
    if task in ("blimp", "supplement"):  # whole sentences: nothing to share
        assert not cached


def test_wug_spearman_matches_transformers_and_scipy(slices, model_dir, reference, monkeypatch):
    from scipy.stats import spearmanr
    items = slices["wug_adj"]
    monkeypatch.setattr(babylm, "read_items", lambda task_, files: items)
    monkeypatch.setattr(babylm, "data_files", lambda *a: [])
    result, rows = babylm.evaluate(load_model(model_dir), load_tokenizer(model_dir), "wug_adj", ["unused"])
    want = [[reference(t, t) for t in it.texts] for it in items]
    p = [1 / (1 + math.exp(b - a)) for a, b in want]  # softmax([a, b])[0]
    rho = spearmanr(p, [it.ratio for it in items])[0]
    assert result["rho"] == pytest.approx(rho, abs=1e-3) and result["score"] == pytest.approx(100 * result["rho"])
    assert [r["p_first"] for r in rows] == pytest.approx(p, abs=1e-4)


def test_tokenizer_with_bos_scores_the_first_word(model_dir, tmp_path, reference):
    """The tokenizer's own special tokens: one whose post-processor adds a BOS scores the first word too."""
    from tokenizers import processors
    tok = load_tokenizer(model_dir)
    text = "Who will Karen flee from after appreciating Holly?"
    items = [Item("u", [text, text], [text, text])]
    plain = encode_items(tok, items)[0][0]
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    with_bos = encode_items(tok, items)[0][0]
    assert len(plain[0]) == 1 and with_bos[0] == [0]  # context: the first token / the BOS alone
    assert with_bos[1] == plain[0] + plain[1]               # every sentence token scored after a BOS
    (tmp_path / "bos").mkdir()
    for f in model_dir.iterdir():
        (tmp_path / "bos" / f.name).write_bytes(f.read_bytes())
    tok.save(str(tmp_path / "bos" / "tokenizer.json"))
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path / "bos")(text)["input_ids"] == with_bos[0] + with_bos[1]


def test_shared_prefix_equals_whole_sequences(slices, babylm_dir, model_dir):
    """Entity tracking (items of one story among them, merged into one cluster) and EWoK through the KV-cache
    path and as whole sequences: the same scores."""
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    et = read_items("entity_tracking", data_files([f"{babylm_dir / 'entity_tracking.zip'}:fast_eval/entity_tracking_fast"],
                                                  "entity_tracking", password=PASSWORD))
    story = [it for it in et if it.texts[0][:200] == et[1].texts[0][:200]][:6]  # one story, other boxes queried
    groups = encode_items(tok, story + slices["entity_tracking"] + slices["ewok"])
    cluster_of = {g: i for i, members in enumerate(shared_prefix.clusters(groups)) for g in members}
    assert len(story) == 6 and cluster_of[0] == cluster_of[1] == cluster_of[2]  # the same moves, other boxes
    assert all(shared_prefix.shared_length(g) >= shared_prefix.MIN_SHARED for g in groups[:len(story) + SLICE])
    cached = shared_prefix.score_groups(model, groups, max_tokens=300, min_shared=1)
    whole = shared_prefix.score_groups(model, groups, max_tokens=300, min_shared=10 ** 9)
    assert cached == [pytest.approx(w, abs=1e-4) for w in whole]
    assert model.cfg.max_position_embeddings == 64  # the longer rotary table was only borrowed


def test_clusters_merge_only_when_it_saves_tokens():
    story, other = list(range(100, 140)), list(range(200, 240))
    groups = [[(story + [1, 2], [3]), (story + [1, 2], [4])],   # a story, queried twice
              [(other + [5], [6]), (other + [5], [7])],
              [(story + [8, 9], [3]), (story + [8, 9], [5])]]
    assert shared_prefix.clusters(groups) == [[0, 2], [1]]
    assert shared_prefix.tokens_run(groups[0] + groups[2]) == (40, 40 + 4 * 3)  # 40 shared; each its own 3


def test_batches_keep_to_the_budgets():
    lengths = [(40 + 7 * i % 90, 3 + i % 11, 2 + i % 9) for i in range(60)]  # (shared, tail, options)
    out = shared_prefix.batches(lengths, max_tokens=200)
    assert sorted(i for b in out for i in b) == list(range(60)) and len(out) > 5
    for b in out:
        m, t, k = max(lengths[i][0] for i in b), max(lengths[i][1] for i in b), sum(lengths[i][2] for i in b)
        assert len(b) == 1 or (m * len(b) <= 200 and t * k <= 200 and k * (m + t) <= shared_prefix.CACHE_ROWS * 200)


def test_ties_go_to_the_first_option():
    """Identical scores count as right (the pipeline's argmax picks the first of equal maxima)."""
    items = [Item("a", ["x", "y"], ["x", "y"]), Item("a", ["x", "y"], ["x", "y"]), Item("b", ["x", "y", "z"], ["x", "y", "z"])]
    r = accuracy_by_uid(items, [[-1.0, -1.0], [-2.0, -1.0], [-3.0, -3.0, -3.5]])
    assert r["uids"]["a"] == {"n": 2, "correct": 1, "ties": 1, "percent": 50.0}
    assert r["uids"]["b"]["correct"] == 1 and r["ties"] == 2 and r["score"] == pytest.approx(75.0)
    splits = accuracy_by_uid([Item("regular_0_ops", ["x", "y"], ["x", "y"]), Item("regular_1_ops", ["x", "y"], ["x", "y"]),
                              Item("ambiref_0_ops", ["x", "y"], ["x", "y"])],
                             [[0.0, -1.0], [-1.0, 0.0], [-1.0, 0.0]], ENTITY_TRACKING_SPLITS)
    assert splits["splits"] == {"regular": 50.0, "ambiref": 0.0} and splits["score"] == pytest.approx(25.0)


def test_real_files_parse_as_the_pipeline_builds_items(babylm_dir):
    fast = babylm_dir / "fast_eval"
    blimp = read_items("blimp", data_files([fast / "blimp_fast"], "blimp"))
    assert len(blimp) == 13400 and len({it.uid for it in blimp}) == 67
    full = read_items("blimp", data_files([babylm_dir / "full_eval" / "blimp_filtered"], "blimp"))
    assert len(full) == 59875
    supplement = read_items("supplement", data_files([babylm_dir / "full_eval" / "supplement_filtered"], "supplement"))
    assert len(supplement) == 5218 and {it.uid for it in supplement} == {
        "hypernym", "qa_congruence_easy", "qa_congruence_tricky", "subject_aux_inversion", "turn_taking"}
    turn = next(it for it in supplement if it.uid == "turn_taking")
    assert "\n" in turn.texts[0] and turn.completions == turn.texts  # kept as written, not stripped
    ewok = read_items("ewok", data_files([fast / "ewok_fast.zip"], "ewok", password=PASSWORD))
    raw = json.loads(zipfile.ZipFile(fast / "ewok_fast.zip").read(
        "evaluation_data/fast_eval/ewok_fast/agent-properties.jsonl", pwd=PASSWORD.encode()).decode().splitlines()[0])
    first = next(it for it in ewok if it.uid == "agent-properties")
    assert first.texts == [raw["Context1"] + " " + raw["Target1"], raw["Context1"] + " " + raw["Target2"]]
    assert first.completions == [" " + raw["Target1"], " " + raw["Target2"]] and len(ewok) == 1100
    et = read_items("entity_tracking", data_files([f"{babylm_dir / 'entity_tracking.zip'}:full_eval/entity_tracking"],
                                                  "entity_tracking", password=PASSWORD))
    assert len(et) == 3152 + 3224 + 3107 and len({it.uid for it in et}) == 18
    assert et[0].texts[0].startswith(et[0].texts[1][:-len(et[0].completions[1])]) and len(et[0].texts) == 5


def test_comps_and_wug_past_files_in_the_documented_formats(tmp_path):
    comps = tmp_path / "comps"
    comps.mkdir()
    line = {"prefix_acceptable": "A robin can", "prefix_unacceptable": "A dax can", "property_phrase": "fly.",
            "negative_sample": "dax"}
    for stem in ("comps_base", "comps_wugs", "comps_wugs_dist-before", "comps_wugs_dist-in-between"):
        (comps / f"{stem}.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    items = read_items("comps", data_files([comps], "comps"))
    assert [it.uid for it in items[::2]] == ["base", "wugs", "wugs_dist_before", "wugs_dist_in_between"]
    assert items[0].texts == ["A robin can fly.", "A dax can fly."] and items[0].completions == ["fly.", "fly."]
    wug = tmp_path / "wug_past_tense.jsonl"
    wug.write_text(json.dumps({"sentences": "Yesterday I splinged.\tYesterday I splang.", "ratio": 0.25}) + "\n")
    (item,) = read_items("wug_past", data_files([wug], "wug_past"))
    assert (item.uid, item.texts, item.ratio) == ("wug_past", ["Yesterday I splinged.", "Yesterday I splang."], 0.25)


def test_comps_scores_the_property_phrase(model_dir, reference, tmp_path):
    """The property phrase has no leading space in the file: the token carrying the joining space is scored."""
    path = tmp_path / "comps_base.jsonl"
    path.write_text(json.dumps({"prefix_acceptable": "The dog is", "prefix_unacceptable": "The truck is",
                                "property_phrase": "an animal."}) + "\n")
    result, rows = babylm.evaluate(load_model(model_dir), load_tokenizer(model_dir), "comps", [path])
    want = [reference(t, "an animal.") for t in ("The dog is an animal.", "The truck is an animal.")]
    assert rows[0]["logprobs"] == pytest.approx(want, abs=2e-4)
    assert result["uids"]["base"]["correct"] == int(want[0] >= want[1])


@pytest.mark.parametrize("content, task, message", [
    ('{"Domain": "d", "Context1": "a", "Target1": "b", "Target2": "c"}\n', "blimp",
     r"x.jsonl:1: not a blimp item: no 'sentence_good', 'sentence_bad' \(its fields are those of a ewok file: use --task ewok\)"),
    ('{"sentence_good": "a b", "sentence_bad": "b a"}\n{"sentence_good": "a b"}\n', "blimp", r"x.jsonl:2: .*'sentence_bad'"),
    ('{"input_prefix": "Box 1 contains ", "options": ["a"], "numops": 0}\n', "entity_tracking",
     r"x.jsonl:1: 'options' must be a list of at least two strings"),
    ('{"sentences": "one sentence only", "ratio": 0.5}\n', "wug_adj", r"x.jsonl:1: 'sentences' must be two sentences"),
    ("\n\n", "ewok", r"x.jsonl: empty \(no ewok items\)"),
    ('{"sentence_good": "a b",\n', "supplement", r"x.jsonl:1: not valid JSON"),
])
def test_bad_files_name_file_and_line(tmp_path, content, task, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_items(task, data_files([path], task))


def test_zips_read_in_place(babylm_dir, tmp_path):
    et = babylm_dir / "entity_tracking.zip"
    with pytest.raises(ValueError, match=r"entity_tracking.zip:fast_eval/entity_tracking_fast/regular.jsonl: the zip "
                                         r"is encrypted: pass --zip-password"):
        read_items("entity_tracking", data_files([f"{et}:fast_eval/entity_tracking_fast"], "entity_tracking"))
    with pytest.raises(ValueError, match="Bad password"):
        data_files([f"{et}:fast_eval/entity_tracking_fast"], "entity_tracking", password="nope")[0].check()
    with pytest.raises(ValueError, match=r"files in 2 folders \(fast_eval/entity_tracking_fast, full_eval/entity_tracking\): name one, e.g. --data .*entity_tracking.zip:fast_eval/entity_tracking_fast"):
        data_files([et], "entity_tracking", password=PASSWORD)  # a folder must be named: fast and full both hold regular
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("d/x.jsonl", json.dumps({"sentence_good": "a b", "sentence_bad": "b a"}) + "\n")
    (file,) = data_files([plain], "blimp")
    assert file.name == f"{plain}:d/x.jsonl" and file.stem == "x" and read_items("supplement", [file])[0].uid == "x"


def test_missing_data_names_the_official_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"comps not found: the comps data is full_eval/comps/.*osf.io/ryjfm"):
        data_files([tmp_path / "comps"], "comps")
    with pytest.raises(FileNotFoundError, match=r"ewok_filtered not found: .*ewok-core/ewok-core-1.0"):
        data_files([tmp_path / "ewok_filtered"], "ewok")


def test_suite_finds_the_official_layout(babylm_dir):
    present, missing = babylm.locate_suite(babylm_dir / "fast_eval")
    fast = babylm_dir / "fast_eval"
    assert present == {"blimp": str(fast / "blimp_fast"), "supplement": str(fast / "supplement_fast"),
                       "entity_tracking": f"{babylm_dir / 'entity_tracking.zip'}:fast_eval/entity_tracking_fast",
                       "ewok": str(fast / "ewok_fast.zip"), "wug_adj": str(fast / "wug_adj_nominalization"),
                       "reading": str(fast / "reading" / "reading_data.csv")}
    assert set(missing) == {"comps", "wug_past"} and "osf.io" in missing["comps"]
    present, missing = babylm.locate_suite(babylm_dir / "full_eval")
    assert present["blimp"] == str(babylm_dir / "full_eval" / "blimp_filtered") and "ewok" in missing


def test_shared_length_leaves_the_predicting_token():
    # options share 5 tokens; the first scored token is at 4 (context of 4), so 3 tokens can be cached
    assert shared_prefix.shared_length([([1, 2, 3, 4], [5, 6]), ([1, 2, 3, 4], [5, 7])]) == 3
    assert shared_prefix.shared_length([([1, 2, 9, 4], [5]), ([1, 2, 3, 4], [5])]) == 2
    assert shared_prefix.shared_length([([1], [2]), ([1], [3])]) == 0


def test_datafile_reads_plain_files(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("x")
    assert DataFile(path).read_text() == "x" and DataFile(path).stem == "a"
    path.write_bytes(b"PK\x03\x04\xff\xfe")  # a zip named .jsonl, say
    with pytest.raises(ValueError, match=r"a.jsonl: not UTF-8 text \(invalid start byte at byte 4\)"):
        DataFile(path).read_text()
