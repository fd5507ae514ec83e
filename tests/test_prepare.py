"""Corpus builders: turns, pairs, triplets, preference pairs, splits, bad files, the CLI, real data."""
import json
import re
import shutil

import pytest

from minitoddler.data.prepare import (SAMPLE_DIR, PrepareConfig, assign_splits, describe_skipped, main,
                                      preference_pairs, prepare, raw_word_count, transcript_rows)

HEADER = """@UTF8
@Begin
@Languages:\teng
@Participants:\tCHI Ann Target_Child, MOT Mother, FAT Father, BRO Tom Brother
@ID:\teng|test|CHI|2;06.|female|||Target_Child|||
@ID:\teng|test|MOT|||||Mother|||
@ID:\teng|test|FAT|||||Father|||
@ID:\teng|test|BRO|||||Brother|||
"""
BODY = """*MOT:\twhat's that ?
*MOT:\tis it a dog ?
*CHI:\tdoggy .
*CHI:\tbig doggy !
*FAT:\txxx .
*CHI:\tme see .
*BRO:\tmine !
*CHI:\tno .
*MOT:\tshare please .
@End
"""


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_turns_pairs_triplets_of_one_transcript(tmp_path):
    chat_dir = tmp_path / "chat"
    chat_dir.mkdir()
    (chat_dir / "a.cha").write_text(HEADER + BODY)
    stats = prepare(PrepareConfig(chat_dir=chat_dir, out=tmp_path / "out", workers=1))
    assert (stats["files"], stats["skipped_files"], stats["utterances"], stats["dropped_empty"]) == (1, 0, 9, 1)
    out = tmp_path / "out"
    assert read_rows(out / "cds/train.jsonl") == [
        {"text": "what's that?", "speaker": "MOT", "role": "Mother", "age": 30.0, "file": "a.cha", "line": 9},
        {"text": "is it a dog?", "speaker": "MOT", "role": "Mother", "age": 30.0, "file": "a.cha", "line": 10},
        {"text": "share please.", "speaker": "MOT", "role": "Mother", "age": 30.0, "file": "a.cha", "line": 17}]
    # MOT's two utterances are one turn; FAT's empty turn (xxx) separates CHI's turns; BRO is a child, not a prompt
    assert read_rows(out / "pairs/train.jsonl") == [
        {"prompt": "what's that? is it a dog?", "response": "doggy. big doggy!", "prompt_speaker": "MOT",
         "age": 30.0, "file": "a.cha", "line": 9}]
    # triplets need three non-empty turns in a row: the empty FAT turn rules out the first three windows
    assert [r["text"] for r in read_rows(out / "triplets/train.jsonl")] == [
        "*CHI: me see.\n*BRO: mine!\n*CHI: no.",
        "*BRO: mine!\n*CHI: no.\n*MOT: share please."]
    assert read_rows(out / "prefs/train.jsonl") == []  # a single pair has no other reply to be the rejected one
    for split in ("val", "test"):  # one transcript: everything in train, empty files for the others
        assert (out / "cds" / f"{split}.jsonl").read_text() == ""


def test_include_child_adds_the_target_child_to_cds():
    utterances = [("MOT", "Mother", 30.0, "hi.", 1), ("CHI", "Target_Child", 30.0, "hi mommy.", 2),
                  ("BRO", "Brother", 30.0, "hi.", 3)]
    assert [r["speaker"] for r in transcript_rows("x.cha", "CHI", utterances)["cds"]] == ["MOT"]
    assert [r["speaker"] for r in transcript_rows("x.cha", "CHI", utterances, include_child=True)["cds"]] == ["MOT", "CHI"]


def test_preference_pairs_same_length_different_reply_and_no_overlap():
    pairs = [("MOT", f"prompt {i} dog?", "CHI", reply, "f.cha", i) for i, reply in enumerate(
        ["a dog.", "big dog.", "my ball.", "red car.", "no.", "yes.", "want juice now."])]
    prefs = preference_pairs(pairs, seed=0)
    assert prefs == preference_pairs(pairs, seed=0)  # deterministic
    assert len(prefs) == 6  # "want juice now." is the only three-word reply: nothing to pair it with
    for p in prefs:
        assert set(p) == {"prompt", "chosen", "rejected", "file", "line"}
        assert p["prompt"].startswith("*MOT: prompt ") and p["chosen"].startswith("*CHI: ")
        chosen, rejected = p["chosen"][6:], p["rejected"][6:]
        assert chosen != rejected and len(chosen.split()) == len(rejected.split())
    no_overlap = preference_pairs(pairs, seed=1, no_overlap=True)
    assert no_overlap and all("dog" not in p["rejected"] for p in no_overlap)  # every prompt mentions "dog"


def test_prefs_rows_have_the_shared_dpo_format(shared_data):
    example = json.loads((shared_data / "dpo/naturalistic_pairs.json").read_text())[0]
    pairs = [("MOT", "what is that?", "CHI", "a dog.", "f", 1), ("MOT", "and this?", "CHI", "a cat.", "f", 3)]
    row = preference_pairs(pairs)[0]
    assert set(example) <= set(row)
    for key in example:
        assert re.match(r"\*[A-Z]+: ", row[key]) and re.match(r"\*[A-Z]+: ", example[key])


def test_splits_are_deterministic_disjoint_and_cover_small_corpora():
    names = [f"corpus/t{i:03d}.cha" for i in range(200)]
    split = assign_splits(names, 0.05, 0.05)
    assert split == assign_splits(list(reversed(names)), 0.05, 0.05)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 180, "val": 10, "test": 10}
    assert set(assign_splits(names[:3], 0.05, 0.05).values()) == {"train", "val", "test"}
    assert set(assign_splits(names[:2], 0.05, 0.05).values()) == {"train"}


def test_invalid_files_cost_what_is_broken_counted_by_reason_and_listed(tmp_path, shared_data, capsys):
    chat_dir = tmp_path / "chat"
    shutil.copytree(shared_data / "chat-invalid", chat_dir)
    (chat_dir / "good.cha").write_text(HEADER + BODY)
    main(["--chat-dir", str(chat_dir), "--out", str(tmp_path / "out"), "--workers", "1"])
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    # only the structurally broken files of tests/test_chat.py's INVALID are skipped whole
    assert stats["files"] == 29 and stats["skipped_files"] == 5
    skipped = stats["skipped"]
    assert skipped["transcripts"] == {"malformed main tier": 3, "file is empty": 1, "unknown kind of line": 1}
    # E302 "*ch:\thello .", E316 "*CHI" and E323 "*CHI hello ." hold three main tiers and two words
    assert (skipped["utterances"]["malformed main tier"], skipped["words"]["malformed main tier"]) == (3, 2)
    # the 13 files whose one utterance has unreadable markup keep the file and lose that utterance
    dropped = {r: n for r, n in skipped["utterances"].items() if r not in skipped["transcripts"]}
    assert sum(dropped.values()) == stats["dropped_markup"] == 13 and dropped["terminator inside an event"] == 3
    assert skipped["annotations"] == {"unknown annotation": 1}
    assert stats["utterances"] == 9 + 23 and stats["dropped_empty"] == 1  # good.cha's "xxx ."
    problems = (tmp_path / "out/problems.txt").read_text().splitlines()
    assert sum(p.startswith("skipped ") for p in problems) == 5
    assert all(re.match(r"(skipped )?\S+\.cha:\d+: ", p) for p in problems)
    assert any(re.search(r"E345_unmatched_scoped_begin.cha:8: utterance dropped: '<' without", p) for p in problems)
    assert any("W108_speaker_not_in_participants.cha:6: speaker MOT" in p for p in problems)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("read 24/29 transcripts (0 not in 'eng'): 32 utterances (13 dropped for their "
                                 "markup, 1 empty after cleaning), ")
    assert printed[1].startswith("skipped 5 transcripts (3 malformed main tier, 1 file is empty, 1 unknown kind of "
                                 "line), 16 utterances (3 in those transcripts, 3 terminator inside an event, ")
    assert printed[1].endswith(", 1 annotation (1 unknown annotation)")


def test_describe_skipped():
    assert describe_skipped({"transcripts": {}, "utterances": {}, "words": {}, "annotations": {}}) == "skipped nothing"
    skipped = {"transcripts": {"not UTF-8 text": 2}, "utterances": {"not UTF-8 text": 30, "unmatched '['": 1},
               "words": {"not UTF-8 text": 100, "unmatched '['": 4}, "annotations": {}}
    assert describe_skipped(skipped) == ("skipped 2 transcripts (2 not UTF-8 text), 31 utterances (30 in those "
                                         "transcripts, 1 unmatched '['), 104 words (100 in those transcripts, 4 in "
                                         "those utterances), 0 annotations")


@pytest.mark.parametrize("raw,n", [
    ("I want the ball .", 4), ("<I want> [//] I get it [: that] .", 5), ("&-uh xxx 0is &=laughs yyy www ok .", 1),
    ("+< it's (.) a dog@c +...", 3), ("", 0)])
def test_raw_word_count(raw, n):
    assert raw_word_count(raw) == n


def test_a_dropped_utterance_still_ends_a_turn(tmp_path):
    chat_dir = tmp_path / "chat"
    chat_dir.mkdir()
    (chat_dir / "a.cha").write_text(HEADER + """*MOT:\tlook .
*CHI:\tball .
*MOT:\thello <world .
*CHI:\tme see .
@End
""")
    stats = prepare(PrepareConfig(chat_dir=chat_dir, out=tmp_path / "out", workers=1))
    assert (stats["utterances"], stats["dropped_markup"], stats["dropped_empty"]) == (4, 1, 0)
    pairs = read_rows(tmp_path / "out/pairs/train.jsonl")
    assert [(p["prompt"], p["response"]) for p in pairs] == [("look.", "ball.")]  # not "ball. me see."
    assert read_rows(tmp_path / "out/triplets/train.jsonl") == []


def test_forms_spoken_keeps_the_childs_own_forms_and_is_recorded(tmp_path):
    chat_dir = tmp_path / "chat"
    chat_dir.mkdir()
    (chat_dir / "a.cha").write_text(HEADER + """*MOT:\twhere did it go ?
*CHI:\tit goed [: went] [* +ed] in there .
*MOT:\tyou wanna [: want to] see ?
*CHI:\tme dunno [: don't know] .
@End
""")
    rows = {}
    for forms in ("spoken", "target"):
        main(["--chat-dir", str(chat_dir), "--out", str(tmp_path / forms), "--forms", forms])
        rows[forms] = [(p["prompt"], p["response"]) for p in read_rows(tmp_path / forms / "pairs/train.jsonl")]
        assert json.loads((tmp_path / forms / "stats.json").read_text())["config"]["forms"] == forms
    assert rows["spoken"] == [("where did it go?", "it goed in there."), ("you wanna see?", "me dunno.")]
    assert rows["target"] == [("where did it go?", "it went in there."), ("you want to see?", "me don't know.")]
    assert PrepareConfig().forms == "spoken"


def test_language_filter(tmp_path, shared_data):
    out = tmp_path / "out"
    eng = prepare(PrepareConfig(chat_dir=shared_data / "chat-reference/languages", out=out, workers=1))
    every = prepare(PrepareConfig(chat_dir=shared_data / "chat-reference/languages", out=out, language="",
                                  workers=1))
    # 20 files, one per language; "eng" and "spa, eng" list English
    assert (eng["files"], eng["skipped_language"], every["skipped_language"]) == (20, 18, 0)


def test_cli_on_the_shared_childes_corpus(tmp_path, shared_data, capsys):
    out = tmp_path / "corpus"
    main(["--chat-dir", str(shared_data / "childes"), "--out", str(out), "--workers", "2"])
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["files"], stats["skipped_files"], stats["utterances"]) == (114, 0, 58008)
    assert stats["skipped"] == {"transcripts": {}, "utterances": {}, "words": {}, "annotations": {}}
    assert "skipped nothing" in printed
    files_of = {}
    for split in ("train", "val", "test"):
        for kind in ("cds", "pairs", "triplets", "prefs"):
            rows = read_rows(out / kind / f"{split}.jsonl")
            assert len(rows) == stats["splits"][split][kind]
            for r in rows:
                files_of.setdefault(r["file"], set()).add(split)
    assert all(len(s) == 1 for s in files_of.values())  # no transcript in two splits
    n_pairs = sum(stats["splits"][s]["pairs"] for s in ("train", "val", "test"))
    assert n_pairs > 10_000 and stats["splits"]["val"]["files"] == stats["splits"]["test"]["files"] == 6
    pair = read_rows(out / "pairs/train.jsonl")[0]
    assert pair["prompt_speaker"] in {"MOT", "FAT", "COL", "RIC"} and pair["age"] >= 14


def test_bundled_corpus_is_the_default_and_deterministic(tmp_path, capsys):
    assert len(list(SAMPLE_DIR.glob("*.cha"))) >= 10
    main(["--out", str(tmp_path / "a")])
    main(["--out", str(tmp_path / "b"), "--workers", "1"])
    for kind in ("cds", "pairs", "triplets", "prefs"):
        for split in ("train", "val", "test"):
            assert (tmp_path / "a" / kind / f"{split}.jsonl").read_bytes() == \
                (tmp_path / "b" / kind / f"{split}.jsonl").read_bytes()
    stats = json.loads((tmp_path / "a/stats.json").read_text())
    assert stats["skipped_files"] == 0 and stats["warnings"] == 0
    assert 1500 <= sum(s["pairs"] for s in stats["splits"].values()) <= 3500  # ~2,300 exchanges
    ages = {r["age"] for r in read_rows(tmp_path / "a/pairs/train.jsonl")}
    assert all(27 <= a <= 36 for a in ages)  # the children are 2;3 to 2;11


def test_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .cha files under"):
        prepare(PrepareConfig(chat_dir=tmp_path, out=tmp_path / "out"))
