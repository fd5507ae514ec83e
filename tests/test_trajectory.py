"""Learning-trajectory checkpoints: shards count corpus words exactly (hand counts on real CHILDES lines and an
independent count over the bundled corpus), the loader knows the words it has served (all ranks together),
--save-at-words writes exactly the crossed marks at the step they are crossed, once across a resume, and
eval.py --checkpoints gives one row per checkpoint."""
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import eval as eval_script
import train_pretrain
from minitoddler.data.chat import read_chat
from minitoddler.data.shards import (TokenLoader, build_shards, count_words, default_shards, read_meta,
                                     shard_tokenizer_dir)
from minitoddler.evals import trajectory
from minitoddler.evals.trajectory import BABYLM_MARKS, parse_marks, words_label
from minitoddler.tokenizer import EOT_ID, load_tokenizer
from stop_after import stop_after

SEED, DEVICE_BATCH, SEQ = 7, 4, 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return default_shards(tmp_path_factory.mktemp("bundled"), kind="cds")


# --- words, counted by hand and independently -------------------------------------------------------
# Real caregiver and child lines of Eve's first transcript (file line -> words counted by eye).
HAND = {125: 4,    # yes, that's much better.
        177: 11,   # why don't you go in the room and kill a fly?
        325: 12,   # there's a cookie on the table with the rest of your crackers.   (after a [//] retracing)
        551: 6,    # no, you don't want milk, honey.
        599: 9,    # no, i don't think mr fraser wants any water.
        1803: 4}   # cock a doodle doo.   (cock_a_doodle_doo)


def independent_words(tok, text: str) -> list[int]:
    """Words ending at each token of `text`, computed another way: whitespace chunks with a letter or digit
    (a line's leading "*MOT:" is a tag, not a word), each word at the token that ends encoding the text up to
    the word's last letter."""
    ids = tok.encode(text, add_special_tokens=False).ids
    counts = [0] * len(ids)
    for line in re.finditer(r"[^\n]+", text):
        for i, chunk in enumerate(re.finditer(r"\S+", line.group())):
            if i == 0 and re.fullmatch(r"\*[A-Z]+:", chunk.group()):
                continue
            letters = [j for j, c in enumerate(chunk.group()) if c.isalnum()]
            if letters:
                end = line.start() + chunk.start() + letters[-1] + 1
                prefix = tok.encode(text[:end], add_special_tokens=False).ids
                assert prefix == ids[:len(prefix)], (text, end)  # the prefix's tokens are the text's
                counts[len(prefix) - 1] += 1
    return counts


def test_word_counts_by_hand_on_real_childes_lines(shards, tmp_path, shared_data):
    lines = {u.line: u.text for u in read_chat(shared_data / "childes/brown-eve-2024-format.cha").utterances}
    docs = [lines[n] for n in HAND]
    triplet = f"*MOT: {lines[125]}\n*CHI: {lines[1803]}\n*MOT: {lines[177]}"  # speaker tags are no words
    docs.append(triplet)
    expected = list(HAND.values()) + [4 + 4 + 11]
    assert [count_words(d) for d in docs] == expected
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = build_shards({"train": [corpus]}, shard_tokenizer_dir(shards), tmp_path / "shards")
    tokens = np.fromfile(out / "train.bin", dtype=np.uint16)
    words = np.fromfile(out / "train.words.bin", dtype=np.uint8)
    assert words.shape == tokens.shape and read_meta(out)["words"]["train"] == sum(expected)
    ends = np.flatnonzero(tokens == EOT_ID)  # a document's words lie between its two separators
    assert [int(words[a:b].sum()) for a, b in zip(ends[:-1], ends[1:])] == expected
    assert words[ends].sum() == 0
    tok = load_tokenizer(shard_tokenizer_dir(shards))
    assert [int(w) for w in words[ends[-2] + 1:ends[-1]]] == independent_words(tok, triplet)


def test_word_counts_of_the_bundled_corpus_token_by_token(shards):
    tok = load_tokenizer(shard_tokenizer_dir(shards))
    texts = [json.loads(line)["text"] for src in read_meta(shards)["splits"]["train"]["sources"]
             for line in open(src, encoding="utf-8") if line.strip()]
    expected = [0]
    for text in texts:
        expected += independent_words(tok, text) + [0]
    words = np.fromfile(shards / "train.words.bin", dtype=np.uint8)
    assert words.tolist() == expected
    assert read_meta(shards)["words"]["train"] == sum(expected) > 5000


def window_words(shards, seq_len=SEQ) -> dict[bytes, int]:
    """Words of each training window (its target tokens), keyed by the window's tokens, from the files."""
    tokens = np.fromfile(shards / "train.bin", dtype=np.uint16).astype(np.int64)
    words = np.fromfile(shards / "train.words.bin", dtype=np.uint8)
    table = {}
    for i in range((len(tokens) - 1) // seq_len):
        window = tokens[i * seq_len:(i + 1) * seq_len + 1]
        table[window.tobytes()] = int(words[i * seq_len + 1:(i + 1) * seq_len + 1].sum())
    assert len(table) == (len(tokens) - 1) // seq_len  # windows are told apart by their tokens
    return table


def served_words(loader, table) -> int:
    """Words of the next batch, looked up by the tokens the loader served."""
    x, y = loader.next_batch()
    return sum(table[torch.cat([x[i], y[i, -1:]]).numpy().tobytes()] for i in range(len(x)))


def test_loader_words_seen_are_the_words_it_served_summed_over_ranks(shards):
    table = window_words(shards)
    one = TokenLoader(shards, "train", DEVICE_BATCH, SEQ, SEED)
    ranks = [TokenLoader(shards, "train", 3, SEQ, SEED, rank=r, world_size=2) for r in (0, 1)]
    assert one.words_seen() == 0
    total, total2 = 0, 0
    for _ in range(one.batches_per_epoch + 5):  # into the second epoch
        total += served_words(one, table)
        assert one.words_seen() == total
    for _ in range(ranks[0].batches_per_epoch + 3):
        total2 += sum(served_words(r, table) for r in ranks)
        assert ranks[0].words_seen() == ranks[1].words_seen() == total2
    state = one.state_dict()  # a resumed loader knows its words from its position alone
    resumed = TokenLoader(shards, "train", DEVICE_BATCH, SEQ, SEED)
    resumed.load_state_dict(state)
    assert resumed.words_seen() == total


def test_save_at_words_parsing():
    assert parse_marks("babylm") == list(BABYLM_MARKS)
    assert [words_label(m) for m in BABYLM_MARKS][:3] + [words_label(BABYLM_MARKS[-1])] == ["1M", "2M", "3M", "100M"]
    assert len(BABYLM_MARKS) == 19 and BABYLM_MARKS[8:11] == (9_000_000, 10_000_000, 20_000_000)
    assert parse_marks("2M, 500k,1.5M,2M,1234") == [1234, 500_000, 1_500_000, 2_000_000]
    assert [words_label(n) for n in (500_000, 1_500_000, 1234, 3 * 10**9)] == ["500K", "1500K", "1234", "3B"]
    for bad in ("", "1.5", "-1M", "0", "1X", "1.0001K"):
        with pytest.raises(ValueError):
            parse_marks(bad)


# --- training writes the crossed marks ------------------------------------------------------------
def run_cfg(shards, out, **kw):
    cfg = dict(model="tiny", data=str(shards), out=str(out), steps=6, batch_tokens=2 * DEVICE_BATCH * SEQ,
               device_batch_size=DEVICE_BATCH, seq_len=SEQ, lr=3e-3, warmup_steps=2, eval_every=0, eval_batches=1,
               save_every=100, log_every=1, device="cpu", dtype="fp32", seed=SEED)
    return train_pretrain.PretrainConfig(**{**cfg, **kw})


@pytest.fixture(scope="module")
def words_per_step(shards):
    """Words seen after each of 6 steps (2 micro-batches each), from the batches a fresh loader serves."""
    table, loader, seen = window_words(shards), TokenLoader(shards, "train", DEVICE_BATCH, SEQ, SEED), [0]
    for _ in range(6):
        seen.append(seen[-1] + served_words(loader, table) + served_words(loader, table))
    return seen


@pytest.fixture(scope="module")
def marks(words_per_step):
    """Exactly the words after step 2 (crossed at step 2), one more (step 3), those of step 5, and one word
    more than the run sees (never written)."""
    w = words_per_step
    return {w[2]: 2, w[2] + 1: 3, w[5]: 5, w[6] + 1: None}


@pytest.fixture(scope="module")
def straight_run(shards, marks, tmp_path_factory):
    out = tmp_path_factory.mktemp("traj") / "straight"
    train_pretrain.main(run_cfg(shards, out, save_at_words=",".join(map(str, marks))))
    return out


def test_checkpoints_are_written_at_the_step_their_words_are_crossed(straight_run, marks, words_per_step):
    expected = {f"chck_{words_label(m)}": step for m, step in marks.items() if step}
    found = {d.name: d for d in (straight_run / "checkpoints").iterdir()}
    assert sorted(found) == sorted(expected)  # no .tmp/.old left, nothing past the end of training
    for name, step in expected.items():
        info = json.loads((found[name] / "words_seen.json").read_text())
        assert (info["step"], info["words_seen"]) == (step, words_per_step[step])
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (found[name] / f).is_file()
    # two marks crossed one step apart hold different weights; the run's own log agrees on the words
    a, b = (load_file(str(found[f"chck_{words_label(m)}"] / "model.safetensors")) for m in sorted(marks)[:2])
    assert any(not torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(r)["words"] for r in (straight_run / "metrics.jsonl").read_text().splitlines()
              if '"words"' in r]
    assert logged == words_per_step[1:]


def test_torchrun_sums_the_words_of_every_process(shards, marks, words_per_step, tmp_path):
    """2 processes x 1 micro-batch serve the same windows per step as 1 process x 2: the same marks at the
    same steps, written once (by the main process)."""
    out = tmp_path / "two"
    args = ["--model", "tiny", "--data", str(shards), "--steps", "6", "--batch-tokens", str(2 * DEVICE_BATCH * SEQ),
            "--device-batch-size", str(DEVICE_BATCH), "--seq-len", str(SEQ), "--eval-every", "0", "--eval-batches",
            "1", "--device", "cpu", "--dtype", "fp32", "--seed", str(SEED), "--out", str(out),
            "--save-at-words", ",".join(map(str, marks))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "train_pretrain.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 proc x 1 accum" in done.stdout
    assert done.stdout.count("words seen: wrote") == 3
    for m, step in marks.items():
        path = out / "checkpoints" / f"chck_{words_label(m)}" / "words_seen.json"
        assert path.is_file() == bool(step)
        if step:
            info = json.loads(path.read_text())
            assert (info["step"], info["words_seen"]) == (step, words_per_step[step])


def test_resume_crosses_each_mark_once_with_the_same_weights(shards, straight_run, marks, tmp_path, monkeypatch,
                                                            capsys):
    calls = []
    real = trajectory.save_words_checkpoint

    def counting(model, run_dir, words, tokenizer_dir, info):
        calls.append((words, info["step"]))
        return real(model, run_dir, words, tokenizer_dir, info)

    monkeypatch.setattr(train_pretrain, "save_words_checkpoint", counting)
    monkeypatch.setattr(train_pretrain, "StopFlag", stop_after(2))  # after step 2, which crosses the first mark
    cfg = run_cfg(shards, tmp_path / "resumed", save_at_words=",".join(map(str, marks)))
    train_pretrain.main(cfg)
    first = sorted(marks)[0]
    assert calls == [(first, 2)]
    at_step_2 = load_file(str(tmp_path / "resumed/checkpoint/model.safetensors"))
    assert f"written in this run: chck_{words_label(first)} (step 2)" in capsys.readouterr().out
    monkeypatch.undo()  # the real stop flag again
    monkeypatch.setattr(train_pretrain, "save_words_checkpoint", counting)
    train_pretrain.main(dataclasses.replace(cfg, resume=True))
    assert calls == [(m, s) for m, s in marks.items() if s]  # each mark once, at its step
    out = capsys.readouterr().out
    assert f"chck_{words_label(first)} " not in out.split("written in this run:")[-1]
    for m, step in marks.items():
        if step:
            a = load_file(str(straight_run / "checkpoints" / f"chck_{words_label(m)}" / "model.safetensors"))
            b = load_file(str(tmp_path / "resumed/checkpoints" / f"chck_{words_label(m)}" / "model.safetensors"))
            assert all(torch.equal(a[k], b[k]) for k in a), m
    a = load_file(str(straight_run / "checkpoints" / f"chck_{words_label(first)}" / "model.safetensors"))
    assert all(torch.equal(a[k], at_step_2[k]) for k in a)  # the mark's weights are those after its step


def test_shards_without_word_counts_fail_in_one_line_only_with_save_at_words(shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    (old / "train.words.bin").unlink()
    with pytest.raises(FileNotFoundError) as e:
        train_pretrain.main(run_cfg(old, tmp_path / "a", steps=1, save_at_words="1K"))
    message = str(e.value)
    assert "\n" not in message and str(old / "train.words.bin") in message
    assert "python -m minitoddler.data.shards" in message and "re-run" in message
    train_pretrain.main(run_cfg(old, tmp_path / "b", steps=1))  # without the flag the old shards still train
    assert (tmp_path / "b/final/model.safetensors").is_file()


# --- eval.py --checkpoints -------------------------------------------------------------------------
def test_eval_checkpoints_gives_one_row_per_checkpoint(straight_run, marks, tmp_path, capsys):
    out = tmp_path / "eval"
    eval_script.main(["--model", str(straight_run), "--checkpoints", "--task", "zorro", "--data",
                      "minitoddler/data/sample_eval/zorro", "--limit", "2", "--device", "cpu", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    written = sorted(m for m, step in marks.items() if step)
    rows = results["trajectory"]["zorro"]["rows"]
    assert [(r["checkpoint"], r["words"]) for r in rows] == [(f"chck_{words_label(m)}", m) for m in written]
    for r in rows:  # each row is that checkpoint's own evaluation
        own = json.loads((out / r["checkpoint"] / "results.json").read_text())
        assert own["model"] == str(straight_run / "checkpoints" / r["checkpoint"])
        assert r["score"] == pytest.approx(100 * own["tasks"]["zorro"]["macro_accuracy"])
    assert [c["step"] for c in results["checkpoints"]] == [marks[m] for m in written]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "trajectory.png").is_file() == has_matplotlib
    printed = capsys.readouterr().out
    assert ("Trajectory plot skipped: matplotlib is not installed" in printed) == (not has_matplotlib)
    assert all(f"| chck_{words_label(m)} | {m:,} |" in (out / "report.md").read_text() for m in written)
