"""Tokenized, packed training shards and a resumable, deterministic loader over them.

    python -m minitoddler.data.shards --corpus CORPUS/cds --out DIR [--tokenizer TOKDIR]
    python -m minitoddler.data.shards --corpus CORPUS/triplets --out DIR2 --tokenizer DIR/tokenizer --shuffle-seed 1

A shard directory holds, per split, `{split}.bin`: one uint16 token stream that starts with
<|endoftext|> and has every document followed by <|endoftext|> (the document separator), plus
`meta.json` (vocab size, token counts, word counts in "words", tokenizer hash, seq_len) and a copy of the tokenizer in
`tokenizer/`, so a model trained on the shards can be exported with the tokenizer it saw.
`{split}.words.bin` (uint8, one count per token of `{split}.bin`) holds how many corpus words end at
each token: words as prepare.py counts them for stats.json, "*MOT:" speaker tags at
the start of a line not counted, each word attributed to its last token. Training knows from it exactly
how many words it has seen (`TokenLoader.words_seen`, for `train_pretrain.py --save-at-words`).

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
import re
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from minitoddler.data.prepare import _WORD, SAMPLE_DIR, PrepareConfig, prepare
from minitoddler.tokenizer import EOT_ID, load_tokenizer, save_tokenizer, train_tokenizer

SEQ_LEN = 256
# A word as prepare.py counts them (stats.json), unless it is a speaker tag "*MOT:" opening a line (triplets).
_WORD_OR_TAG = re.compile(rf"(?m)^[ \t]*\*[A-Z]{{2,4}}:|({_WORD.pattern})")


def count_words(text: str) -> int:
    """Corpus words in one document: what `words_per_token` spreads over its tokens."""
    return sum(1 for m in _WORD_OR_TAG.finditer(text) if m.group(1))


def words_per_token(texts: list[str], encodings) -> np.ndarray:
    """How many words end at each token of the packed stream of `texts` (each document's tokens followed
    by its <|endoftext|>, which ends none): uint8. A word belongs to the last token that starts before
    the word's last character ends (the token offsets are characters of the original text)."""
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    n_tokens = int(lengths.sum())
    doc_of_token = np.repeat(np.arange(len(texts)), lengths)
    char_base = np.zeros(len(texts), dtype=np.int64)  # where each document starts in "\n".join(texts)
    np.cumsum([len(t) + 1 for t in texts[:-1]], out=char_base[1:])
    starts = np.fromiter((s for e in encodings for s, _ in e.offsets), dtype=np.int64, count=n_tokens)
    starts += char_base[doc_of_token]
    ends = np.fromiter((m.end() for m in _WORD_OR_TAG.finditer("\n".join(texts)) if m.group(1)), dtype=np.int64)
    last = np.searchsorted(starts, ends, side="left") - 1
    if ends.size and (np.any(np.diff(starts) < 0) or last.min() < 0 or np.any(
            doc_of_token[last] != np.searchsorted(char_base, ends - 1, side="right") - 1)):
        raise ValueError("the tokenizer's offsets do not map words to tokens (not increasing, or a word "
                         "without a token): word counts need a tokenizer that reports character offsets")
    counts = np.bincount(last + doc_of_token[last], minlength=n_tokens + len(texts))  # + one EOT per earlier doc
    if counts.max(initial=0) > 255:
        raise ValueError(f"a token ends {counts.max()} words, more than uint8 word counts hold")
    return counts.astype(np.uint8)


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
            "splits": {}, "words": {}}
    for split, paths in jsonl_paths_by_split.items():
        texts = [row[text_field] for path in paths for row in _read_jsonl(path, text_field)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(texts)
        stream, words = [np.array([EOT_ID], dtype=np.uint16)], [np.zeros(1, dtype=np.uint8)]
        for start in range(0, len(texts), 10_000):  # batches keep memory flat on large corpora
            ids, batch = [], texts[start:start + 10_000]
            encodings = tok.encode_batch(batch, add_special_tokens=False)
            for enc in encodings:
                ids += enc.ids
                ids.append(EOT_ID)
            stream.append(np.array(ids, dtype=np.uint16))
            words.append(words_per_token(batch, encodings))
        tokens, words = np.concatenate(stream), np.concatenate(words)
        for name, array in ((f"{split}.bin", tokens), (f"{split}.words.bin", words)):
            tmp = out_dir / f"{name}.tmp"
            array.tofile(tmp)
            os.replace(tmp, out_dir / name)
        meta["splits"][split] = {"documents": len(texts), "tokens": int(tokens.size),
                                 "sources": [str(p) for p in paths]}
        meta["words"][split] = int(words.sum())  # corpus words of the split; per token in {split}.words.bin
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
        self._window_words, self._epoch_words, self._cumulative = None, {}, (None, None)

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

    def words_seen(self) -> int:
        """Corpus words the batches given out so far hold, summed over every rank (their windows together)."""
        return self.words_after(self.epoch * self.batches_per_epoch + self.batch)

    def words_after(self, batches: int) -> int:
        """Corpus words in the first `batches` batches of every rank (summed over the ranks): a word counts
        when its last token is a target (y). Exact from the shard's word counts (`{split}.words.bin`).
        Rank r's first k windows of an epoch are order[r::world_size][:k], so all ranks' together are
        order[:k * world_size]: every process computes the same total without communicating."""
        epoch, batch = divmod(batches, self.batches_per_epoch)
        total = sum(self._epoch_total(e) for e in range(epoch))
        if batch:
            if self._cumulative[0] != epoch:
                per_epoch = self.batches_per_epoch * self.batch_size * self.world_size
                self._cumulative = (epoch, np.cumsum(self._words()[self._permutation(epoch)[:per_epoch]]))
            total += int(self._cumulative[1][batch * self.batch_size * self.world_size - 1])
        return total

    def _epoch_total(self, epoch: int) -> int:
        if epoch not in self._epoch_words:
            per_epoch = self.batches_per_epoch * self.batch_size * self.world_size
            self._epoch_words[epoch] = int(self._words()[self._permutation(epoch)[:per_epoch]].sum())
        return self._epoch_words[epoch]

    def _words(self) -> np.ndarray:
        """Words per window (those ending at its target tokens), from `{split}.words.bin`."""
        if self._window_words is None:
            path = self.path.with_name(self.path.name[:-len(".bin")] + ".words.bin")
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: {self.path.parent} was built before shards counted "
                                        f"words; re-run the shard step to count them: {rebuild_command(self.path.parent)}")
            words = np.memmap(path, dtype=np.uint8, mode="r")
            if words.size != self.tokens.size:
                raise ValueError(f"{path} has {words.size} word counts for {self.tokens.size} tokens in "
                                 f"{self.path}: rebuild the shards (python -m minitoddler.data.shards)")
            targets = words[1:self.num_windows * self.seq_len + 1].reshape(self.num_windows, self.seq_len)
            self._window_words = targets.sum(axis=1, dtype=np.int64)
        return self._window_words

    def _permutation(self, epoch: int) -> np.ndarray:
        """Every window of the split in epoch `epoch`'s order (drawn from seed + epoch)."""
        return np.random.default_rng(self.seed + epoch).permutation(self.num_windows)

    def _windows(self) -> np.ndarray:
        """This rank's window indices for the current epoch (a permutation drawn from seed + epoch)."""
        if self._order_epoch != self.epoch:
            order = self._permutation(self.epoch)
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


def rebuild_command(shard_dir) -> str:
    """The command that rebuilds `shard_dir` from its corpus with its own tokenizer and settings (meta.json)."""
    shard_dir = Path(shard_dir)
    meta = read_meta(shard_dir)
    sources = meta["splits"].get("train", {}).get("sources") or ["CORPUS/train.jsonl"]
    extra = "".join(f" --{flag} {meta[key]}" for flag, key, default in (
        ("field", "text_field", "text"), ("seq-len", "seq_len", SEQ_LEN), ("shuffle-seed", "shuffle_seed", None))
        if meta.get(key, default) != default)
    return (f"python -m minitoddler.data.shards --corpus {Path(sources[0]).parent} --out {shard_dir} "
            f"--tokenizer {shard_dir / meta['tokenizer']}{extra}")


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
        print(f"  {split:5s} {info['documents']:8d} documents {info['tokens']:10d} tokens {meta['words'][split]:10d} words")
    print(f"wrote {out}/{{{','.join(meta['splits'])}}}.bin, meta.json and tokenizer/ (vocab {meta['vocab_size']})")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
