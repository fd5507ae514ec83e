"""Score caregiver->child pairs with rewards, for the SFT curriculum: one column per reward and their sum.

    python -m minitoddler.rewards.score --data prepared/pairs --reward coherence,clarity --coherence-model rm/rm2 \\
        --out prepared/scored
    python train_sft.py --model runs/pre/final --data prepared/scored --score-column total

--data is a pairs JSONL file (rows {"prompt": caregiver line, "response": child reply, ...} as
`minitoddler.data.prepare` writes them) or a directory of them (each *.jsonl: train, val, test; a
prepared corpus directory's pairs/ is used), and --out the file or directory to write. Each output
row is the input row with one column per reward of --reward, under the reward's name, and "total",
the weighted sum of the spec. Every reward of `rewards.combine` works: "coherence" is RM-2 on the
caregiver line + reply, "clarity" RM-4 on the caregiver line alone, "childlike" RM-1 on the reply,
"length" RM-3, and so on, with the reward flags of the RL scripts (--coherence-model DIR, ...). A
column the input already has is replaced. The Toddler-LLM card kept the top 10% by RM-2 and RM-4:
`--reward coherence,clarity` and `--score-column total` (train_sft's curriculum ranks by it).

Resumable: rows go to OUT.partial batch by batch, and the file is renamed to OUT once every row is in.
A rerun continues a .partial after its last complete line (a line cut off mid-write is dropped),
after checking that its rows are the input's rows with the same columns, so nothing is scored or
written twice; a finished OUT is checked and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..sft import read_pairs
from .combine import CombinedReward, add_reward_flags, build_reward, options_from_args, parse_spec

TOTAL = "total"
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def pair_files(data: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) files: one file, or every *.jsonl of a directory (or of its pairs/)."""
    if data.is_file():
        if out.resolve() == data.resolve():
            raise SystemExit(f"--out {out} is the input file; write the scored pairs elsewhere")
        return [(data, out)]
    if not data.is_dir():
        raise FileNotFoundError(f"{data} not found: give a pairs JSONL file or a directory of them "
                                "(`python -m minitoddler.data.prepare` writes <out>/pairs/{train,val,test}.jsonl)")
    root = data / "pairs" if (data / "pairs").is_dir() else data
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl pairs files in {root}")
    if out.resolve() == root.resolve():
        raise SystemExit(f"--out {out} is the input directory; write the scored pairs elsewhere")
    return [(f, out / f.name) for f in files]


def check_written(path: Path, lines: list[bytes], pairs: list[dict], columns: list[str]) -> None:
    """Each written line must be the input row of the same position, scored in every column."""
    for n, (line, pair) in enumerate(zip(lines, pairs), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or (row.get("prompt"), row.get("response")) != (pair["prompt"], pair["response"]) \
                or any(c not in row for c in columns):
            raise SystemExit(f"{path}:{n}: not the scored row of {pair['_where']} (other input, or scored with "
                             f"other rewards than {', '.join(columns)}); delete {path} to score afresh")


def written_lines(partial: Path) -> list[bytes]:
    """The complete lines of a half-written output, after cutting off an unfinished last line."""
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with partial.open("r+b") as f:
            f.truncate(end)
    return data[:end].splitlines()


def score_file(src: Path, dst: Path, reward: CombinedReward, batch_size: int) -> int:
    """Score the pairs of `src` into `dst` (resuming dst.partial); returns the rows scored in this call."""
    pairs = read_pairs(src)
    columns = [name for name, _, _ in reward.parts] + [TOTAL]
    if dst.is_file():
        lines = dst.read_bytes().splitlines()
        if len(lines) != len(pairs):
            raise SystemExit(f"{dst} has {len(lines)} rows but {src} has {len(pairs)}; delete {dst} to score afresh")
        check_written(dst, lines, pairs, columns)
        print(f"{dst}: already scored ({len(pairs)} rows), skipped")
        return 0
    partial = dst.with_name(dst.name + ".partial")
    done = 0
    if partial.is_file():
        lines = written_lines(partial)
        if len(lines) > len(pairs):
            raise SystemExit(f"{partial} has {len(lines)} rows but {src} has only {len(pairs)}; delete it")
        check_written(partial, lines, pairs, columns)
        done = len(lines)
        print(f"{partial}: {done} of {len(pairs)} rows already scored, continuing")
    replaced = sorted(set(columns) & {k for row in pairs for k in row})
    if replaced and not done:
        print(f"note: {src} already has column(s) {', '.join(replaced)}; the new scores replace them")
    dst.parent.mkdir(parents=True, exist_ok=True)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(pairs), initial=done, unit="pair", desc=src.name, disable=not interactive)
    t0, start, next_report = time.time(), done, done
    with partial.open("a", encoding="utf-8") as f:
        while done < len(pairs):
            batch = pairs[done:done + batch_size]
            parts = reward.components([r["prompt"] for r in batch], [r["response"] for r in batch])
            parts[TOTAL] = reward.total(parts)
            for i, row in enumerate(batch):
                scored = {k: v for k, v in row.items() if k != "_where"}
                scored.update({name: round(float(s[i]), 6) for name, s in parts.items()})
                f.write(_to_json(scored) + "\n")
            f.flush()
            done += len(batch)
            bar.update(len(batch))
            if not interactive and (done >= next_report or done == len(pairs)):
                rate = (done - start) / max(time.time() - t0, 1e-9)
                print(f"{src.name}: {done}/{len(pairs)} pairs ({rate:.1f} pairs/s)", flush=True)
                next_report = done + max(batch_size, len(pairs) // 10)
        os.fsync(f.fileno())
    bar.close()
    os.replace(partial, dst)
    return done - start


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="pairs JSONL file, or a directory of them")
    ap.add_argument("--out", required=True, help="output file (for a file --data) or directory")
    ap.add_argument("--device", default="auto", help='auto | cpu | cuda')
    add_reward_flags(ap, default_spec="coherence,clarity")
    args = ap.parse_args(argv)
    parse_spec(args.reward)  # a typo in the spec fails before any model is loaded
    files = pair_files(Path(args.data), Path(args.out))
    reward = build_reward(args.reward, {**options_from_args(args), "device": args.device})
    batch_size = args.batch_size or 64
    t0 = time.time()
    scored = sum(score_file(src, dst, reward, batch_size) for src, dst in files)
    print(f"scored {scored} pairs with {args.reward} in {time.time() - t0:.1f}s; wrote "
          f"{', '.join(str(dst) for _, dst in files)} (columns {', '.join(n for n, _ in parse_spec(args.reward))}, "
          f"{TOTAL})")
    return [dst for _, dst in files]


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
