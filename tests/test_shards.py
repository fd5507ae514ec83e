"""Packed uint16 shards and the resumable, DDP-sharded TokenLoader."""
import json

import numpy as np
import pytest
import torch

from minitoddler.data.shards import (TokenLoader, build_shards, default_shards, main, read_meta,
                                     shard_tokenizer_dir)
from minitoddler.tokenizer import load_tokenizer, train_tokenizer

DOCS = [f"the {c} dog number {i} runs to the park." for i in range(60) for c in ("red", "Brown")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(DOCS, tmp_path_factory.mktemp("tok"), vocab_size=300)


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "file": "x.cha"}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("corpus")
    paths = {"train": [write_jsonl(d / "train.jsonl", DOCS[:100])], "val": [write_jsonl(d / "val.jsonl", DOCS[100:])]}
    return build_shards(paths, tokenizer, d / "shards")


def test_bin_is_eot_then_each_document_followed_by_eot(shard_dir, tokenizer):
    expected = [0]
    for doc in DOCS[:100]:
        expected += tokenizer.encode(doc).ids + [0]
    stream = np.fromfile(shard_dir / "train.bin", dtype=np.uint16)
    assert stream.tolist() == expected
    meta = read_meta(shard_dir)
    assert meta["splits"]["train"] == {"documents": 100, "tokens": len(expected),
                                       "sources": [str(shard_dir.parent / "train.jsonl")]}
    assert meta["vocab_size"] == tokenizer.get_vocab_size() and meta["seq_len"] == 256
    # the tokenizer travels with the shards and is the one that made them
    tok = load_tokenizer(shard_tokenizer_dir(shard_dir))
    assert tok.encode("The Red dog.").ids == tokenizer.encode("the red dog.").ids


def test_windows_targets_and_one_epoch_covers_every_window_once(shard_dir):
    stream = np.fromfile(shard_dir / "train.bin", dtype=np.uint16).astype(np.int64)
    loader = TokenLoader(shard_dir, "train", batch_size=4, seq_len=16)
    assert loader.num_windows == (len(stream) - 1) // 16
    assert loader.batches_per_epoch == loader.num_windows // 4
    assert loader.tokens_per_epoch == loader.num_windows * 16
    seen = []
    for _ in range(loader.batches_per_epoch):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            start = next(i for i in range(loader.num_windows) if stream[i * 16:i * 16 + 16].tolist() == row_x.tolist())
            assert row_y.tolist() == stream[start * 16 + 1:start * 16 + 17].tolist()
            seen.append(start)
    assert len(set(seen)) == len(seen) == loader.batches_per_epoch * 4
    loader.next_batch()
    assert loader.state_dict()["epoch"] == 1


def test_seed_determinism_and_reshuffle_per_epoch(shard_dir):
    a = TokenLoader(shard_dir, "train", batch_size=2, seq_len=16, seed=3)
    b = TokenLoader(shard_dir, "train", batch_size=2, seq_len=16, seed=3)
    c = TokenLoader(shard_dir, "train", batch_size=2, seq_len=16, seed=4)
    first = [a.next_batch()[0] for _ in range(a.batches_per_epoch)]
    assert all(torch.equal(x, b.next_batch()[0]) for x in first)
    assert not all(torch.equal(x, c.next_batch()[0]) for x in first)
    second = [a.next_batch()[0] for _ in range(a.batches_per_epoch)]
    assert not all(torch.equal(x, y) for x, y in zip(first, second))  # epoch 1 has its own order


def test_resume_continues_at_exactly_the_same_batch(shard_dir):
    a = TokenLoader(shard_dir, "train", batch_size=3, seq_len=16, seed=7)
    for _ in range(a.batches_per_epoch - 2):  # stop two batches before the epoch ends
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # plain ints, JSON round trip
    b = TokenLoader(shard_dir, "train", batch_size=3, seq_len=16, seed=7)
    b.load_state_dict(state)
    for _ in range(5):  # across the epoch boundary
        assert all(torch.equal(p, q) for p, q in zip(a.next_batch(), b.next_batch()))
    wrong = TokenLoader(shard_dir, "train", batch_size=4, seq_len=16, seed=7)
    with pytest.raises(ValueError, match="batch_size=3 but this loader has batch_size=4"):
        wrong.load_state_dict(state)


def test_ranks_get_disjoint_windows(shard_dir):
    stream = np.fromfile(shard_dir / "train.bin", dtype=np.uint16).tolist()
    ranks = [TokenLoader(shard_dir, "train", batch_size=2, seq_len=16, seed=1, rank=r, world_size=2) for r in (0, 1)]
    n = ranks[0].num_windows
    every_window = {tuple(stream[i * 16:i * 16 + 16]) for i in range(n)}
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == n // 2 // 2
    rows = [[], []]
    for r, loader in enumerate(ranks):
        for _ in range(loader.batches_per_epoch):
            rows[r] += [tuple(x) for x in loader.next_batch()[0].tolist()]
    seen = set(rows[0]) | set(rows[1])
    assert len(seen) == len(rows[0]) + len(rows[1])  # no window twice, on one rank or across ranks
    assert seen <= every_window and len(seen) >= n - 2 * (2 + 1)  # at most a batch per rank left over


def test_clear_errors(shard_dir, tmp_path, tokenizer):
    with pytest.raises(ValueError, match="fewer than one batch"):
        TokenLoader(shard_dir, "val", batch_size=64, seq_len=256)
    with pytest.raises(FileNotFoundError, match="no test.bin"):
        TokenLoader(shard_dir, "test", batch_size=1)
    empty = build_shards({"train": [write_jsonl(tmp_path / "e.jsonl", [])]}, tokenizer, tmp_path / "s")
    with pytest.raises(ValueError, match="fewer than one batch"):  # just the leading <|endoftext|>
        TokenLoader(empty, "train", batch_size=1, seq_len=8)
    (tmp_path / "s" / "train.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        TokenLoader(tmp_path / "s", "train", batch_size=1)
    with pytest.raises(ValueError, match=r"bad.jsonl:2: row has no 'text' field"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "a"}\n{"prompt": "b"}\n')
        build_shards({"train": [bad]}, tokenizer, tmp_path / "s2")


def test_default_shards_builds_once_and_exposes_its_tokenizer(tmp_path):
    shard_dir = default_shards(tmp_path, kind="triplets")
    meta = read_meta(shard_dir)
    tok = load_tokenizer(shard_tokenizer_dir(shard_dir))
    assert meta["vocab_size"] == tok.get_vocab_size() <= 8192
    assert tok.token_to_id("<|endoftext|>") == 0
    assert all(meta["splits"][s]["tokens"] > 257 for s in ("train", "val", "test"))
    x, _ = TokenLoader(shard_dir, "train", batch_size=2).next_batch()
    assert "*mot:" in tok.decode(x[0].tolist())  # dialogue triplets, lower-cased
    stamp = (shard_dir / "train.bin").stat().st_mtime_ns
    assert default_shards(tmp_path, kind="triplets") == shard_dir
    assert (shard_dir / "train.bin").stat().st_mtime_ns == stamp  # cached, not rebuilt
    cds = default_shards(tmp_path, kind="cds")
    assert read_meta(cds)["tokenizer_sha256"] == meta["tokenizer_sha256"]  # both kinds share one tokenizer
    with pytest.raises(ValueError, match="kind must be"):
        default_shards(tmp_path, kind="pairs")


def test_cli_trains_a_tokenizer_when_none_is_given(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", DOCS)
    write_jsonl(tmp_path / "val.jsonl", DOCS[:10])
    main(["--corpus", str(tmp_path), "--out", str(tmp_path / "shards"), "--vocab-size", "280"])
    assert f"wrote {tmp_path / 'shards'}" in capsys.readouterr().out
    meta = read_meta(tmp_path / "shards")
    assert set(meta["splits"]) == {"train", "val"} and meta["vocab_size"] <= 280
    main(["--corpus", str(tmp_path), "--out", str(tmp_path / "shards2"), "--tokenizer", str(tmp_path / "shards/tokenizer")])
    assert np.array_equal(np.fromfile(tmp_path / "shards/train.bin", dtype=np.uint16),
                          np.fromfile(tmp_path / "shards2/train.bin", dtype=np.uint16))


def _documents(shard_dir, tokenizer):
    stream = np.fromfile(shard_dir / "train.bin", dtype=np.uint16).tolist()
    docs, current = [], []
    for t in stream[1:]:
        if t == 0:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(t)
    return docs


def test_shuffle_seed_packs_the_same_documents_in_a_seeded_order(tmp_path, tokenizer):
    """Triplets are shuffled before packing, so overlapping neighbours do not share a window."""
    paths = {"train": [write_jsonl(tmp_path / "train.jsonl", DOCS[:100])]}
    plain = _documents(build_shards(paths, tokenizer, tmp_path / "plain"), tokenizer)
    first = _documents(build_shards(paths, tokenizer, tmp_path / "a", shuffle_seed=0), tokenizer)
    again = _documents(build_shards(paths, tokenizer, tmp_path / "b", shuffle_seed=0), tokenizer)
    other = _documents(build_shards(paths, tokenizer, tmp_path / "c", shuffle_seed=1), tokenizer)
    assert plain == [d.lower() for d in DOCS[:100]]
    assert sorted(first) == sorted(plain) and first != plain
    assert first == again and other != first
    assert read_meta(tmp_path / "a")["shuffle_seed"] == 0 and read_meta(tmp_path / "plain")["shuffle_seed"] is None
