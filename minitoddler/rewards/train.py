"""Train the BERT reward models: RM-1 child-likeness (from CHILDES) and RM-2 coherence (from scored pairs).

    python -m minitoddler.rewards.train --kind childlike --data ../shared/data/childes --init DIR --out runs/rm1
    python -m minitoddler.rewards.train --kind coherence --data ../shared/data/ppo/responses_with_scores.csv \
        --pairs ../shared/data/dpo/naturalistic_pairs.json \
        --eval-pairs ../shared/data/eval/dialogue-minimal-pairs/dialogue_eval_words.json --init DIR --out runs/rm2

--init is a BERT directory (bert-base-uncased as the released models, or a sentence-transformers
MiniLM; a fresh one-logit head is added when it has none) or `scratch`: a small BERT with a WordPiece
vocabulary learned from the training texts (for demos; use a larger --lr such as 5e-4).
Soft labels in [0, 1], BCEWithLogits, AdamW (weight decay 0.01, not on biases/norms), linear warmup
over the first 10% of steps then linear decay. Defaults follow the released RM-2 recipe: 5 epochs,
LR 2e-5, batch 150, max length 96 (32 for RM-1).

RM-1 trains on target-child utterances (soft labels from age) and adult utterances (label 0), at most
--adult-ratio adults per child utterance of each transcript (see rewards/childlike.py).

RM-2 trains on judge-scored pairs (score / 5 as a soft label) and, with --pairs, on preference pairs
(the real child reply labelled 1, a random child utterance 0): judge scores alone never show it a reply
that belongs to another conversation. --eval-pairs (the dialogue minimal pairs) reports after each epoch
the share of pairs where the real reply scores higher; training rows that appear there are dropped.

The held-out split is by group, so nothing of it is seen in training: whole transcripts for RM-1, all
pairs of one caregiver prompt for RM-2 (the original split leaked test rows into training).
--out receives the model in the Hugging Face layout (loads with `load_bert` and in transformers),
metrics.jsonl (per-epoch held-out loss / accuracy at 0.5 / Pearson r / MAE; for RM-1 the ROC AUC
between children under 3;0 and adults; for RM-2 Spearman's rho with the held-out judge scores and the
preference-pair accuracies), train_info.json (for RM-1 also the scores of a few probe
replies) and score_range.json (min and max score over the training inputs, for RM-2's min-max
normalisation).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import atomic_write
from ..data.prepare import SAMPLE_DIR
from ..evals.stats import ranks, spearman
from ..precision import autocast, pick_device
from ..rl.prefs import Pref, read_prefs
from ..trainer import MetricsLog, check_finite, clip_and_step, make_optimizer, progress_line, set_lr
from .bert import Bert, BertConfig, load_bert, save_bert, train_wordpiece
from .childlike import ADULT_RATIO, PROBES, childes_examples
from .coherence import RANGE_FILE, read_pairs
from .references import prompt_key


def group_split(groups: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, val): whole groups go to validation until it holds >= val_fraction of the rows."""
    names = sorted(set(groups))
    random.Random(seed).shuffle(names)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    val: list[int] = []
    for g in names:
        if len(val) >= val_fraction * len(groups):
            break
        val += by_group[g]
    val_set = set(val)
    return [i for i in range(len(groups)) if i not in val_set], sorted(val)


def scratch_bert(texts: list[str], vocab_size: int, hidden: int, layers: int, heads: int, max_length: int,
                 seed: int) -> Bert:
    tokenizer = train_wordpiece(texts, vocab_size)
    cfg = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=max_length,
                     pad_token_id=tokenizer.token_to_id("[PAD]"))
    torch.manual_seed(seed)
    return Bert(cfg, tokenizer, max_length, num_labels=1)


def roc_auc(scores, classes: list[int | None]) -> float:
    """P(a row of class 1 scores above a row of class 0), ties counting one half (the Mann-Whitney U
    statistic / (n1 n0), from average ranks); rows of class None are left out. NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.array([-1 if k is None else k for k in classes])
    s, c = s[c >= 0], c[c >= 0]
    n1, n0 = int((c == 1).sum()), int((c == 0).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((ranks(s)[c == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def pair_accuracy(model: Bert, pairs: list[Pref], batch_size: int) -> float:
    """Share of preference pairs whose chosen reply scores strictly higher than the rejected one."""
    prompts = [p.prompt for p in pairs]
    chosen = model.score(prompts, [p.chosen for p in pairs], batch_size=batch_size)
    rejected = model.score(prompts, [p.rejected for p in pairs], batch_size=batch_size)
    return float((chosen > rejected).double().mean())


def evaluate(model: Bert, rows: "Rows", batch_size: int) -> dict:
    """Held-out BCE, accuracy of (p > 0.5) against (label > 0.5), Pearson r and mean absolute error; the
    ROC AUC between rows of class 1 and class 0 (RM-1), Spearman's rho over the judge-scored rows (RM-2)."""
    p = model.score(rows.a, rows.b, batch_size=batch_size).double().clamp(1e-7, 1 - 1e-7)
    y = torch.tensor(rows.labels, dtype=torch.float64)
    pearson = float(np.corrcoef(p.numpy(), y.numpy())[0, 1]) if len(y) > 1 and p.std() > 0 and y.std() > 0 \
        else float("nan")
    out = {"loss": float(F.binary_cross_entropy(p, y)), "accuracy": float(((p > 0.5) == (y > 0.5)).double().mean()),
           "pearson": pearson, "mae": float((p - y).abs().mean())}
    if rows.auc_classes is not None:
        out["auc"] = roc_auc(p.numpy(), rows.auc_classes)
    if rows.judged is not None and any(rows.judged):
        judged = np.flatnonzero(rows.judged)
        out["judged_spearman"] = spearman(p.numpy()[judged], y.numpy()[judged])
    return out


@dataclass
class Rows:
    """Training or held-out rows: texts (and second texts of pairs), soft labels, the group each row is
    split by, and what the held-out metrics need."""
    a: list[str]
    b: list[str] | None
    labels: list[float]
    groups: list[str]
    auc_classes: list[int | None] | None = None  # RM-1: 1 child under 3;0, 0 adult, None otherwise
    judged: list[bool] | None = None             # RM-2: scored by the judge (not from a preference pair)

    def pick(self, idx: list[int]) -> "Rows":
        def sub(xs):
            return None if xs is None else [xs[i] for i in idx]
        return Rows(*(sub(getattr(self, f.name)) for f in fields(self)))


def coherence_rows(args, eval_pairs: list[Pref]) -> Rows:
    """Judge-scored pairs (label score / --label-scale) and --pairs preference pairs (chosen 1, rejected 0),
    grouped by caregiver line; rows whose (line, reply) is in `eval_pairs` are dropped."""
    if len(args.data) != 1:
        raise SystemExit("--kind coherence takes one --data file (CSV or JSONL of scored pairs)")
    prompts, replies, labels = read_pairs(args.data[0], args.prompt_col, args.reply_col, args.label_col,
                                          args.label_scale)
    print(f"{len(prompts)} scored pairs from {args.data[0]}, mean label {sum(labels) / len(labels):.3f}")
    judged = [True] * len(prompts)
    for path in args.pairs:
        prefs = read_prefs(path)[0]
        for p in prefs:
            prompts += [p.prompt, p.prompt]
            replies += [p.chosen, p.rejected]
        labels += [1.0, 0.0] * len(prefs)
        judged += [False, False] * len(prefs)
        print(f"{len(prefs)} preference pairs from {path}: the real reply labelled 1, the random one 0")
    held = {(prompt_key(p.prompt).lower(), prompt_key(r).lower()) for p in eval_pairs for r in (p.chosen, p.rejected)}
    keep = [i for i, (p, r) in enumerate(zip(prompts, replies))
            if (prompt_key(p).lower(), prompt_key(r).lower()) not in held]
    if len(keep) < len(prompts):
        print(f"dropped {len(prompts) - len(keep)} training rows whose caregiver line and reply are in --eval-pairs")
    return Rows(prompts, replies, labels, [prompt_key(p) for p in prompts], judged=judged).pick(keep)


def prefixed(metrics: dict) -> dict:
    """Metrics as metrics.jsonl names them: val_ for the held-out rows; eval_ ones are already named."""
    return {k if k.startswith("eval_") else f"val_{k}": v for k, v in metrics.items()}


def load_data(args, eval_pairs: list[Pref]) -> Rows:
    """The rows of --kind: RM-1's child and adult utterances, or RM-2's scored and preference pairs."""
    if args.kind == "coherence":
        return coherence_rows(args, eval_pairs)
    rows = childes_examples(args.data, args.adult_ratio, args.seed)
    n_adult = sum(rows.adult)
    child_labels = [y for y, adult in zip(rows.labels, rows.adult) if not adult]
    if not child_labels:
        raise SystemExit(f"no target-child utterances with a known age in {' '.join(args.data)}")
    print(f"{len(child_labels)} child utterances with a known age ({rows.skipped} without age skipped), "
          f"labels {min(child_labels):.2f}..{max(child_labels):.2f}, mean "
          f"{sum(child_labels) / len(child_labels):.3f}; {n_adult} adult utterances with label 0 "
          f"(of {rows.adults_available}; --adult-ratio {args.adult_ratio} per child utterance and transcript)")
    return Rows(rows.texts, None, rows.labels, rows.groups, auc_classes=rows.auc_classes())


def initial_model(args, texts: list[str]):
    """The BERT to fine-tune: a small one built from scratch on `texts`, or --init's with a new 1-logit head."""
    if args.init == "scratch":
        return scratch_bert(texts, args.vocab_size, args.scratch_hidden, args.scratch_layers, args.scratch_heads,
                            args.max_length, args.seed)
    model = load_bert(args.init, new_head=True)
    if model.num_labels != 1:
        raise SystemExit(f"{args.init} has a {model.num_labels}-label head; RM training needs one logit")
    model.max_length = min(args.max_length, model.cfg.max_position_embeddings)
    if model.max_length < args.max_length:
        print(f"note: {args.init} has {model.max_length} positions; inputs are truncated to that many "
              f"tokens, not {args.max_length}")
    return model


def save_trained(model, out: Path, ta, tb, ty, vy, batch_size: int) -> dict:
    """Write the model and its training-score range (RANGE_FILE); return the held-out baselines of a
    constant prediction (the mean training label)."""
    save_bert(model, out)
    train_scores = model.score(ta, tb, batch_size=batch_size)
    score_range = {"min": float(train_scores.min()), "max": float(train_scores.max())}
    atomic_write(out / RANGE_FILE, lambda p: p.write_text(json.dumps(score_range) + "\n"))
    mean_label = sum(ty) / len(ty)
    return {"majority_accuracy": float(np.mean([(y > 0.5) == (mean_label > 0.5) for y in vy])),
            "mean_label_mae": float(np.mean([abs(y - mean_label) for y in vy]))}


def train(args) -> dict:
    device = pick_device(args.device)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    eval_pairs = read_prefs(args.eval_pairs)[0] if args.eval_pairs else []
    data = load_data(args, eval_pairs)
    train_idx, val_idx = group_split(data.groups, args.val_fraction, args.seed)
    if args.limit:
        train_idx = sorted(random.Random(args.seed).sample(train_idx, min(args.limit, len(train_idx))))
    if not val_idx or not train_idx:
        raise SystemExit(f"split of {len(data.groups)} rows left {len(train_idx)} for training and {len(val_idx)} "
                         "held out; give more data or another --val-fraction")
    trn, val_rows = data.pick(train_idx), data.pick(val_idx)
    ta, tb, ty = trn.a, trn.b, trn.labels
    print(f"split by {'transcript' if args.kind == 'childlike' else 'prompt'}: {len(ta)} train, "
          f"{len(val_rows.a)} held out")

    def held_out() -> dict:
        """evaluate() on the held-out rows, and the share of --eval-pairs where the real reply wins."""
        metrics = evaluate(model, val_rows, args.batch_size)
        if eval_pairs:
            metrics["eval_pair_accuracy"] = pair_accuracy(model, eval_pairs, args.batch_size)
        return metrics

    model = initial_model(args, ta + (tb or [])).to(device).train()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    log = MetricsLog(out)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, betas=(0.9, 0.999), device=device)
    steps_per_epoch = math.ceil(len(ta) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = max(1, int(0.1 * total))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M parameters on {device}; {args.epochs} epochs x {steps_per_epoch} steps")
    before = held_out()
    print(f"held out before training: {json.dumps(before)}")
    log.write(epoch=0, step=0, **prefixed(before))
    generator = torch.Generator().manual_seed(args.seed)
    step, t0 = 0, time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(ta), generator=generator).tolist()
        running = []
        for start in range(0, len(order), args.batch_size):
            rows = order[start:start + args.batch_size]
            lr = args.lr * min((step + 1) / warmup, (total - step) / max(1, total - warmup))
            set_lr(optimizer, lr)
            enc = model.encode([ta[i] for i in rows], None if tb is None else [tb[i] for i in rows])
            target = torch.tensor([ty[i] for i in rows], device=device)
            with autocast(device):
                logits = model(**enc)[:, 0].float()
            loss = F.binary_cross_entropy_with_logits(logits, target)
            loss.backward()
            clip_and_step(model, optimizer, 1.0, step)
            running.append(check_finite(loss, step))
            step += 1
            if step % args.log_every == 0:
                recent = running[-args.log_every:]
                print(progress_line(step, total, time.time() - t0, (time.time() - t0) / step,
                                    loss=sum(recent) / len(recent), lr=lr), flush=True)
        val = held_out()
        row = {"epoch": epoch, "step": step, "train_loss": sum(running) / len(running),
               **prefixed(val), "seconds": round(time.time() - t0, 1)}
        log.write(**row)
        print(json.dumps(row))

    info = {"args": vars(args), "train_rows": len(ta), "val_rows": len(val_rows.a), "val": val, "val_before": before,
            "val_baseline": save_trained(model, out, ta, tb, ty, val_rows.labels, args.batch_size),
            "seconds": round(time.time() - t0, 1)}
    if args.kind == "childlike":
        info["probes"] = dict(zip(PROBES, model.score(list(PROBES)).tolist()))
        print("probe replies: " + ", ".join(f"{t!r} {s:.3f}" for t, s in info["probes"].items()))
    atomic_write(out / "train_info.json", lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    print(f"held-out baselines (constant = mean train label): {json.dumps(info['val_baseline'])}")
    print(f"wrote {out} (model, metrics.jsonl, train_info.json, {RANGE_FILE})")
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("childlike", "coherence"), required=True, help='childlike: RM-1, child vs adult utterance (classifier); coherence: RM-2, scored caregiver->child pairs (regression)')
    ap.add_argument("--data", nargs="+", default=None,
                    help="childlike: CHILDES .cha files/directories (default: the bundled sample); "
                         "coherence: a CSV/JSONL of scored pairs")
    ap.add_argument("--init", required=True, help="a BERT directory, or 'scratch'")
    ap.add_argument("--out", required=True, help="directory for the trained model and its metrics")
    ap.add_argument("--epochs", type=int, default=5, help='passes over the training rows')
    ap.add_argument("--lr", type=float, default=2e-5, help='peak learning rate')
    ap.add_argument("--weight-decay", type=float, default=0.01, help='AdamW weight decay')
    ap.add_argument("--batch-size", type=int, default=150, help='rows per optimizer step')
    ap.add_argument("--max-length", type=int, default=None, help="tokens (default 32 childlike, 96 coherence)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help='fraction of rows held out for validation')
    ap.add_argument("--adult-ratio", type=float, default=ADULT_RATIO,
                    help="childlike: at most this many adult utterances (label 0) per target-child utterance "
                         "of each transcript, drawn at random (0: children only; a large value keeps all)")
    ap.add_argument("--limit", type=int, default=0, help="train on at most this many rows (0: all)")
    ap.add_argument("--seed", type=int, default=0, help='seed of the split, sampling and initialization')
    ap.add_argument("--device", default="auto", help='auto | cpu | cuda')
    ap.add_argument("--log-every", type=int, default=10, help="print the training loss every N steps")
    ap.add_argument("--pairs", nargs="*", default=[],
                    help="coherence: preference-pair files ({prompt, chosen, rejected} JSON/JSONL, e.g. "
                         "../shared/data/dpo/naturalistic_pairs.json): chosen labelled 1, rejected 0")
    ap.add_argument("--eval-pairs", default="",
                    help="coherence: preference pairs to report the share where chosen scores higher, after "
                         "each epoch (e.g. the dialogue minimal pairs dialogue_eval_words.json); their rows "
                         "are kept out of training")
    ap.add_argument("--prompt-col", default="Mother Prompt", help='coherence: column of the caregiver line')
    ap.add_argument("--reply-col", default="Child Response", help='coherence: column of the child reply')
    ap.add_argument("--label-col", default="Extracted Score", help='coherence: column of the score')
    ap.add_argument("--label-scale", type=float, default=5.0, help="label = score / this")
    ap.add_argument("--vocab-size", type=int, default=4000, help="scratch: WordPiece vocabulary size")
    ap.add_argument("--scratch-hidden", type=int, default=128, help='scratch: hidden size')
    ap.add_argument("--scratch-layers", type=int, default=2, help='scratch: transformer layers')
    ap.add_argument("--scratch-heads", type=int, default=2, help='scratch: attention heads')
    args = ap.parse_args(argv)
    if args.data is None:
        if args.kind == "coherence":
            ap.error("--kind coherence needs --data: a CSV/JSONL of (prompt, reply, score) rows, e.g. "
                     "../shared/data/ppo/responses_with_scores.csv")
        args.data = [str(SAMPLE_DIR)]
    if args.max_length is None:
        args.max_length = 32 if args.kind == "childlike" else 96
    return train(args)


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
