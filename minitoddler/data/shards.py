"""Tokenized, packed training shards and a resumable, deterministic loader over them.

    python -m minitoddler.data.shards --corpus CORPUS/cds --out DIR [--tokenizer TOKDIR]
    python -m minitoddler.data.shards --corpus CORPUS/triplets --out DIR2 --tokenizer DIR/tokenizer --shuffle-seed 1

A shard directory holds, per split, `{split}.bin`: one uint16 token stream that starts with
<|endoftext|> and has every document followed by <|endoftext|> (the document separator), plus
`meta.json` (vocab size, token counts, tokenizer hash, seq_len) and a copy of the tokenizer in
`tokenizer/`, so a model trained on the shards can be exported with the tokenizer it saw.

`TokenLoader` cuts a split into windows of seq_len + 1 tokens (x = window[:-1], y = window[1:];
consecutive windows share one token so every token is a target once per epoch), visits them in an
order shuffled from seed + epoch, gives rank r of world_size the windows r, r + world_size, ...,
and its position (`state_dict()`) is part of the resumable training state.
"""
import argparse
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from minitoddler.data.prepare import SAMPLE_DIR, PrepareConfig, prepare
from minitoddler.tokenizer import EOT_ID, load_tokenizer, save_tokenizer, train_tokenizer

SEQ_LEN = 256


def build_shards(jsonl_paths_by_split: dict[str, list[Path]], tokenizer, out_dir, text_field: str = "text",
                 seq_len: int = SEQ_LEN, shuffle_seed: int | None = None) -> Path:
    """Tokenize the `text_field` of every JSONL row into out_dir/{split}.bin; write meta.json; return out_dir.

    tokenizer: a tokenizers.Tokenizer or a directory holding tokenizer.json; it is copied to out_dir/tokenizer/.
    shuffle_seed: pack the documents in an order shuffled from this seed; None keeps file order (right for
    cds, where the neighbouring utterances are the conversation). Triplets need shuffling: consecutive
    triplets share two turns, so packed side by side they teach the model to copy the repeated turns
    from the window instead of answering (on Eve + Naomi, val loss fell to 2.0 nats that way, a model
    that copies, and dialogue minimal pairs stayed at chance).
    """
    out_dir = Path(out_dir)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    vocab_size = tok.get_vocab_size()
    if vocab_size > 65536:
        raise ValueError(f"vocab size {vocab_size} does not fit uint16 shards (max 65536)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    tok_dir = save_tokenizer(tok, out_dir / "tokenizer")
    meta = {"vocab_size": vocab_size, "seq_len": seq_len, "dtype": "uint16", "eot_id": EOT_ID,
            "text_field": text_field, "tokenizer": "tokenizer",
            "tokenizer_sha256": file_sha256(tok_dir / "tokenizer.json"), "shuffle_seed": shuffle_seed,
            "splits": {}}
    for split, paths in jsonl_paths_by_split.items():
        texts = [row[text_field] for path in paths for row in _read_jsonl(path, text_field)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(texts)
        stream = [np.array([EOT_ID], dtype=np.uint16)]
        for start in range(0, len(texts), 10_000):  # batches keep memory flat on large corpora
            ids = []
            for enc in tok.encode_batch(texts[start:start + 10_000], add_special_tokens=False):
                ids += enc.ids
                ids.append(EOT_ID)
            stream.append(np.array(ids, dtype=np.uint16))
        tokens = np.concatenate(stream)
        tmp = out_dir / f"{split}.bin.tmp"
        tokens.tofile(tmp)
        os.replace(tmp, out_dir / f"{split}.bin")
        meta["splits"][split] = {"documents": len(texts), "tokens": int(tokens.size),
                                 "sources": [str(p) for p in paths]}
    _write_json(out_dir / "meta.json", meta)  # written last: its presence marks a complete build
    return out_dir


def read_meta(shard_dir) -> dict:
    path = Path(shard_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"no meta.json in {shard_dir}: build shards with "
                                f"`python -m minitoddler.data.shards --corpus CORPUS/cds --out {shard_dir}`")
    return json.loads(path.read_text())


def shard_tokenizer_dir(shard_dir) -> Path:
    """The tokenizer directory that belongs to a shard directory."""
    return Path(shard_dir) / read_meta(shard_dir)["tokenizer"]


class TokenLoader:
    """Deterministic, shuffled, DDP-sharded batches (x, y) of int64 token windows from one split."""

    def __init__(self, shard_dir, split: str, batch_size: int, seq_len: int = SEQ_LEN, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        path = Path(shard_dir) / f"{split}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"no {split}.bin in {shard_dir}: build the shards first "
                                    f"(python -m minitoddler.data.shards --help)")
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty: the '{split}' split has no tokens")
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")
        self.path, self.batch_size, self.seq_len, self.seed = path, batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.num_windows = (len(self.tokens) - 1) // seq_len
        self.batches_per_epoch = self.num_windows // world_size // batch_size  # per rank; the remainder is skipped
        if self.batches_per_epoch == 0:
            need = batch_size * world_size * seq_len + 1
            raise ValueError(f"{path}: the '{split}' split has {len(self.tokens)} tokens, fewer than one batch "
                             f"needs ({batch_size} x {world_size} ranks x {seq_len} + 1 = {need}); "
                             f"use a smaller batch_size/seq_len or more data")
        self.tokens_per_epoch = self.num_windows * seq_len  # tokens of the whole split (all ranks)
        self.epoch, self.batch = 0, 0
        self._order_epoch, self._order = None, None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, each (batch_size, seq_len) int64; rolls over to a reshuffled epoch."""
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        starts = self._windows()[self.batch * self.batch_size:(self.batch + 1) * self.batch_size] * self.seq_len
        window = np.asarray(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        self.batch += 1
        return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "num_windows": self.num_windows}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "batch_size", "world_size", "num_windows"):
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={getattr(self, key)}; "
                                 f"resume with the same data and settings")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def _windows(self) -> np.ndarray:
        """This rank's window indices for the current epoch (a permutation drawn from seed + epoch)."""
        if self._order_epoch != self.epoch:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.num_windows)
            self._order = order[self.rank::self.world_size][:self.batches_per_epoch * self.batch_size]
            self._order_epoch = self.epoch
        return self._order


def default_shards(out_dir, kind: str = "cds", vocab_size: int = 8192) -> Path:
    """Shards of the bundled sample corpus (prepare + tokenizer + shards), built once and cached in out_dir.

    Returns out_dir/shards-{kind}; the tokenizer (trained on the cds and triplets train splits so both
    kinds share it) is in out_dir/tokenizer and copied to the shard directory.
    """
    if kind not in ("cds", "triplets"):
        raise ValueError(f"kind must be 'cds' or 'triplets', got {kind!r}")
    out_dir = Path(out_dir)
    shard_dir = out_dir / f"shards-{kind}"
    code = [Path(__file__).with_name(n) for n in ("chat.py", "clean.py", "prepare.py", "shards.py")]
    inputs = sorted(SAMPLE_DIR.glob("*.cha")) + code + [Path(__file__).parents[1] / "tokenizer.py"]
    fingerprint = hashlib.sha256(json.dumps([vocab_size, [file_sha256(p) for p in inputs]]).encode()).hexdigest()
    if (shard_dir / "meta.json").is_file() and read_meta(shard_dir).get("fingerprint") == fingerprint:
        return shard_dir
    corpus, tok_dir, stamp = out_dir / "corpus", out_dir / "tokenizer", out_dir / "fingerprint.txt"
    if stamp.is_file() and stamp.read_text() == fingerprint:  # corpus and tokenizer already built
        tok = load_tokenizer(tok_dir)
    else:
        prepare(PrepareConfig(chat_dir=SAMPLE_DIR, out=corpus, val_frac=0.1, test_frac=0.1, workers=1))
        texts = [row["text"] for k in ("cds", "triplets") for row in _read_jsonl(corpus / k / "train.jsonl", "text")]
        tok = train_tokenizer(texts, tok_dir, vocab_size=vocab_size)
        stamp.write_text(fingerprint)
    build_shards({s: [corpus / kind / f"{s}.jsonl"] for s in ("train", "val", "test")}, tok, shard_dir,
                 shuffle_seed=0 if kind == "triplets" else None)
    meta = read_meta(shard_dir)
    meta["fingerprint"] = fingerprint
    _write_json(shard_dir / "meta.json", meta)
    return shard_dir


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_jsonl(path, field: str):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if field not in row:
                raise ValueError(f"{path}:{number}: row has no {field!r} field (has {sorted(row)})")
            yield row


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True,
                    help="directory with {train,val,test}.jsonl, e.g. CORPUS/cds or CORPUS/triplets from prepare")
    ap.add_argument("--out", type=Path, required=True, help="shard directory to write")
    ap.add_argument("--tokenizer", type=Path,
                    help="directory with tokenizer.json (default: train one on the train split)")
    ap.add_argument("--vocab-size", type=int, default=8192, help='BPE vocabulary size when a tokenizer is trained')
    ap.add_argument("--field", default="text", help="JSONL field holding the text")
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help="context length recorded in meta.json")
    ap.add_argument("--shuffle-seed", type=int, default=None,
                    help="pack documents in a shuffled order (use it for triplets: overlapping neighbours "
                         "teach copying); default: file order")
    args = ap.parse_args(argv)
    paths = {s: [args.corpus / f"{s}.jsonl"] for s in ("train", "val", "test")
             if (args.corpus / f"{s}.jsonl").is_file()}
    if "train" not in paths:
        raise SystemExit(f"no train.jsonl in {args.corpus}: "
                         "run `python -m minitoddler.data.prepare --out CORPUS` first")
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        texts = (row[args.field] for row in _read_jsonl(paths["train"][0], args.field))
        tokenizer = train_tokenizer(texts, args.out / "tokenizer", vocab_size=args.vocab_size)
    out = build_shards(paths, tokenizer, args.out, text_field=args.field, seq_len=args.seq_len,
                       shuffle_seed=args.shuffle_seed)
    meta = read_meta(out)
    for split, info in meta["splits"].items():
        print(f"  {split:5s} {info['documents']:8d} documents {info['tokens']:10d} tokens")
    print(f"wrote {out}/{{{','.join(meta['splits'])}}}.bin, meta.json and tokenizer/ (vocab {meta['vocab_size']})")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
