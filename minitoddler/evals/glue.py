"""(Super)GLUE fine-tuning as the BabyLM 2025 pipeline does it (evaluation_pipeline/finetune/ of
github.com/babylm/evaluation-pipeline-2025, as its eval_finetuning.sh runs it): per task a fresh fp32 copy of
the LM with a classifier head on its final-norm hidden states, AdamW with a linear warmup and a cosine decay,
`valid` scored after every epoch; the best epoch (by accuracy, F1 for mrpc and qqp) gives the task's valid
accuracy, and the mean of those is the (Super)GLUE score. Each epoch leaves a resumable state in
OUT/glue/TASK/state (safetensors + JSON), so a stopped run continues from its last epoch and a finished task
(OUT/glue/TASK/result.json) is read back instead of trained again."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..checkpoint import atomic_write
from ..train_state import find_checkpoint, load_checkpoint, save_checkpoint
from ..trainer import progress_line, set_lr
from .minimal_pairs import jsonl_items
from .shared_prefix import positions_up_to
from .sources import OSF

SUBTASKS = ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")
FOLDER = "glue_filtered"  # under the official full_eval/ (there is no fast_eval version)
DOWNLOAD = f"full_eval/{FOLDER} in {OSF}"
POOLS = ("first", "last")


@dataclass(frozen=True)
class TaskFormat:
    """How the pipeline reads (finetune/dataset.py) and trains (eval_finetuning.sh) one task."""
    first: tuple[str, ...]       # fields of the first text: joined by spaces, or put into `template`
    second: tuple[str, ...]      # fields of the second text (joined by spaces)
    template: str = ""
    labels: int = 2
    select_by: str = "accuracy"  # the valid metric that picks the best epoch
    batch_size: int = 32
    epochs: int = 10


FORMATS = {
    "boolq": TaskFormat(("question",), ("passage",), batch_size=16),
    "mnli": TaskFormat(("premise",), ("hypothesis",), labels=3),
    "mrpc": TaskFormat(("sentence1",), ("sentence2",), select_by="f1"),
    "multirc": TaskFormat(("question", "answer"), ("paragraph",), "Question: {} Answer: {}", batch_size=16),
    "qqp": TaskFormat(("question1",), ("question2",), select_by="f1"),
    "rte": TaskFormat(("sentence1",), ("sentence2",)),
    "wsc": TaskFormat(("span2_text", "span1_text"), ("text",), 'Does "{}" refer to "{}" in this passage?', epochs=30),
}


@dataclass
class Settings:
    """The pipeline's hyperparameters (finetune/run.py's defaults, eval_finetuning.sh's values)."""
    epochs: int = 0              # 0 = the task's: 10, wsc 30
    batch_size: int = 0          # 0 = the task's: 16 for boolq and multirc, 32 for the others
    valid_batch_size: int = 64
    lr: float = 3e-5
    weight_decay: float = 0.01   # on every parameter (one AdamW group), betas (0.9, 0.999), eps 1e-8
    warmup: float = 0.06         # the share of the steps with a linear warmup from 0
    min_factor: float = 0.1      # the cosine ends at min_factor * lr
    max_length: int = 512        # tokens per (first, second) pair, longest-first truncation
    dropout: float = 0.1
    pool: str = "first"          # first: token 0 (the pipeline's default) | last: the last real token
    seed: int = 42
    limit: int = 0               # the first N train and N valid rows (0 = all)


@dataclass(frozen=True)
class Example:
    first: str
    second: str
    label: int


def task_files(root, task: str) -> tuple[Path, Path]:
    """(train, valid) jsonl of `task` in the glue_filtered folder `root`; a missing one is named with its source."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the glue data is {DOWNLOAD}")
    files = (root / f"{task}.train.jsonl", root / f"{task}.valid.jsonl")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: the {task} data is {official(f.name)} (or leave {task} out: "
                                    "--glue-tasks names the tasks to run)")
    return files


def official(name: str) -> str:
    return f"full_eval/{FOLDER}/{name} in {OSF}"


def available(root, tasks) -> tuple[list[str], dict[str, str]]:
    """(the tasks whose train and valid files are in `root`, {task: where its missing file officially is})."""
    present, missing = [], {}
    for task in tasks:
        absent = [n for n in (f"{task}.train.jsonl", f"{task}.valid.jsonl") if not (Path(root) / n).is_file()]
        if absent:
            missing[task] = " and ".join(map(official, absent))
        else:
            present.append(task)
    return present, missing


def _example(row, task: str, where: str) -> Example:
    fmt = FORMATS[task]
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a {task} row (a JSON object with {', '.join(fmt.first + fmt.second)}, label)")
    absent = [k for k in fmt.first + fmt.second + ("label",) if k not in row]
    if absent:
        other = next((t for t, f in FORMATS.items() if t != task and all(k in row for k in f.first + f.second)), "")
        hint = f" (its fields are those of a {other} file)" if other else ""
        raise ValueError(f"{where}: not a {task} row: no {', '.join(map(repr, absent))}{hint}")
    first, second = [row[k] for k in fmt.first], [row[k] for k in fmt.second]
    if not all(isinstance(t, str) for t in first + second):
        raise ValueError(f"{where}: the {task} fields {', '.join(fmt.first + fmt.second)} must be strings")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < fmt.labels:
        raise ValueError(f"{where}: label {label!r}: a {task} label is an integer from 0 to {fmt.labels - 1}")
    return Example(fmt.template.format(*first) if fmt.template else " ".join(first), " ".join(second), label)


def read_examples(path, task: str, limit: int = 0) -> list[Example]:
    """The (first text, second text, label) rows of a `task` jsonl file, as the pipeline builds them."""
    path, examples = Path(path), []
    for n, row in jsonl_items(path.read_text(encoding="utf-8"), str(path)):
        if limit and len(examples) == limit:
            break
        examples.append(_example(row, task, f"{path}:{n}"))
    if not examples:
        raise ValueError(f"{path}: empty (no {task} rows)")
    return examples


def encode(tokenizer: Tokenizer, examples: list[Example], max_length: int) -> list[list[int]]:
    """Token ids of each pair as the pipeline's collate gets them from transformers (`tokenizer(pairs,
    truncation=True, max_length=...)`): the tokenizer's own pair template, longest-first truncation."""
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's tokenizer keeps its settings
    tok.no_padding()
    tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch([(x.first, x.second) for x in examples])]


def collate(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask (padding side "right", the pipeline's; pads are masked)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids.to(device), mask.to(device)


class ClassifierHead(nn.Module):
    """The pipeline's head (finetune/classifier_model.py): LayerNorm (no affine), Linear, GELU, LayerNorm,
    Dropout, Linear to the labels."""

    def __init__(self, hidden: int, labels: int, dropout: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.nonlinearity = nn.Sequential(
            nn.LayerNorm(hidden, eps, elementwise_affine=False), nn.Linear(hidden, hidden), nn.GELU(),
            nn.LayerNorm(hidden, eps, elementwise_affine=False), nn.Dropout(dropout), nn.Linear(hidden, labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(x)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) -> (B, H): token 0 ("first"; in a causal LM it has seen only itself), or each row's last
    real token ("last": the one that has seen the whole input)."""
    if how == "first":
        return hidden[:, 0]
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.bool() * positions).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class Classifier(nn.Module):
    """The LM's final-norm hidden states, pooled, through the head: (B, T) ids -> (B, labels) logits."""

    def __init__(self, lm: nn.Module, labels: int, how: str = "first", dropout: float = 0.1):
        super().__init__()
        self.lm, self.how = lm, how
        self.head = ClassifierHead(lm.cfg.hidden_size, labels, dropout)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(ids, attention_mask=mask, hidden_only=True)
        return self.head(pool(hidden, mask, self.how).float())


def lr_factor(step: int, warmup: int, total: int, min_factor: float = 0.1) -> float:
    """The pipeline's schedule (finetune/utils.py) at optimizer step `step` (from 0): linear from 0 over
    `warmup` steps, then a half cosine from 1 down to `min_factor` at `total`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(min_factor, min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def classification_metrics(preds: list[int], labels: list[int], n_labels: int) -> dict[str, float]:
    """Accuracy, and for two labels F1 of label 1 and Matthews' correlation (sklearn's values, 0 where
    undefined), as fractions: the pipeline's `--metrics accuracy f1 mcc` (accuracy only for mnli)."""
    p, y = np.asarray(preds), np.asarray(labels)
    out = {"accuracy": float((p == y).mean())}
    if n_labels == 2:
        tp, fp = int(((p == 1) & (y == 1)).sum()), int(((p == 1) & (y == 0)).sum())
        fn, tn = int(((p == 0) & (y == 1)).sum()), int(((p == 0) & (y == 0)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = (tp * tn - fp * fn) / denom if denom else 0.0
    return out


@torch.no_grad()
def predict(clf: Classifier, seqs: list[list[int]], batch_size: int, device) -> list[int]:
    """Argmax labels of `seqs` (run in length order, to pad little; returned in the given order)."""
    clf.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    preds = [0] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        logits = clf(*collate([seqs[i] for i in idx], device))
        for i, p in zip(idx, logits.argmax(-1).tolist()):
            preds[i] = p
    return preds


def seed_everything(seed: int) -> None:
    """The pipeline's seeding (finetune/utils.py), at the start of every task."""
    random.seed(seed)
    torch.manual_seed(seed)


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the weights: a finished or half-done task is only reused for the same model."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass
class TaskData:
    """One task's encoded rows."""
    train: list[list[int]]
    train_labels: list[int]
    valid: list[list[int]]
    valid_labels: list[int]


def _ticker(task: str, total: int, start_step: int, every: float = 30.0):
    """tick(step, **metrics): a progress line with an ETA every `every` s (stderr), and at each epoch's end
    (final=True, stdout)."""
    t0 = last = time.time()

    def tick(step: int, final: bool = False, **metrics) -> None:
        nonlocal last
        now = time.time()
        if final or now - last >= every:
            last, elapsed = now, now - t0
            line = progress_line(step, total, elapsed, elapsed / max(1, step - start_step), **metrics)
            print(f"glue/{task}: {line}", file=sys.stdout if final else sys.stderr, flush=True)
    return tick


def train_epoch(clf: Classifier, opt, data: TaskData, batch: int, step: int, schedule: tuple, tick,
                device) -> tuple[int, float]:
    """One pass over shuffled train rows in full batches (the pipeline's loader drops the last partial
    one); the learning rate set before each step. Returns (steps done so far, mean loss)."""
    lr, warmup, total, min_factor = schedule
    clf.train()
    order, losses = torch.randperm(len(data.train)).tolist(), []
    for b in range(len(order) // batch):
        idx = order[b * batch:(b + 1) * batch]
        logits = clf(*collate([data.train[i] for i in idx], device))
        loss = F.cross_entropy(logits, torch.tensor([data.train_labels[i] for i in idx], device=device))
        loss.backward()
        set_lr(opt, lr * lr_factor(step, warmup, total, min_factor))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        tick(step, loss=losses[-1])
    return step, sum(losses) / len(losses)


def _resume(state_dir: Path, clf: Classifier, opt, setup: dict, task: str) -> dict:
    """The progress of a half-done run with the same setup (model, head, optimizer and RNG restored), or a
    fresh one."""
    found = find_checkpoint(state_dir)
    if found is not None:
        if json.loads((found / "trainer_state.json").read_text()).get("setup") == setup:
            state = load_checkpoint(found, clf.lm, opt)
            clf.head.load_state_dict(state["tensors"])
            print(f"glue/{task}: resumed from {found} after epoch {state['progress']['epoch']}")
            return state["progress"]
        print(f"glue/{task}: {found} holds a run of another model or other settings: starting afresh")
    return {"epoch": 0, "step": 0, "best": None, "history": []}


def fine_tune(lm: nn.Module, task: str, data: TaskData, settings: Settings, state_dir: Path, setup: dict,
              device) -> dict:
    """Fine-tune a copy of `lm` on one task, scoring valid after each epoch and keeping the best epoch
    (strictly better only: ties keep the earlier one, as the pipeline's Trainer does); after each epoch
    the whole state is saved to `state_dir`. Returns the progress: epochs, history, best epoch."""
    fmt = FORMATS[task]
    epochs, batch = settings.epochs or fmt.epochs, settings.batch_size or fmt.batch_size
    if len(data.train) < batch:
        raise ValueError(f"glue/{task}: {len(data.train)} training rows make no full batch of {batch} (the "
                         "pipeline drops a partial batch): raise --limit")
    total = len(data.train) // batch * epochs
    seed_everything(settings.seed)
    clf = Classifier(copy.deepcopy(lm).float(), fmt.labels, settings.pool, settings.dropout).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    progress = _resume(state_dir, clf, opt, setup, task)
    schedule = (settings.lr, int(settings.warmup * total), total, settings.min_factor)
    tick = _ticker(task, total, progress["step"])
    with positions_up_to(clf.lm, max(map(len, data.train + data.valid))):  # past the context, as HF Llama runs
        for epoch in range(progress["epoch"] + 1, epochs + 1):
            progress["step"], loss = train_epoch(clf, opt, data, batch, progress["step"], schedule, tick, device)
            preds = predict(clf, data.valid, settings.valid_batch_size, device)
            metrics = classification_metrics(preds, data.valid_labels, fmt.labels)
            progress["history"].append({"epoch": epoch, "train_loss": loss, **metrics})
            best = progress["best"]
            if best is None or metrics[fmt.select_by] > best["metrics"][fmt.select_by]:
                progress["best"] = {"epoch": epoch, "metrics": metrics, "predictions": preds}
            progress["epoch"] = epoch
            tick(progress["step"], final=True, epoch=f"{epoch}/{epochs}", loss=loss,
                 **{f"valid_{k}": v for k, v in metrics.items()}, best_epoch=progress["best"]["epoch"])
            save_checkpoint(state_dir, clf.lm, opt, progress["step"], {"setup": setup, "progress": progress},
                            extra_tensors=clf.head.state_dict())
    return progress


def encode_task(tokenizer, examples: tuple[list[Example], list[Example]], max_length: int) -> TaskData:
    train, valid = examples
    return TaskData(encode(tokenizer, train, max_length), [x.label for x in train],
                    encode(tokenizer, valid, max_length), [x.label for x in valid])


def run_task(model, tokenizer, task: str, examples: tuple, settings: Settings, folder: Path, setup: dict,
             device) -> dict:
    """One task's result: read back from `folder`/result.json when a run with the same setup finished, else
    fine-tuned (resuming from `folder`/state); the state is removed once the result is written."""
    done = folder / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("setup") == setup:
            print(f"glue/{task}: finished earlier: read back from {done}")
            return result
    data = encode_task(tokenizer, examples, settings.max_length)
    start = time.perf_counter()
    progress = fine_tune(model, task, data, settings, folder / "state", setup, device)
    best, fmt = progress["best"], FORMATS[task]
    context = model.cfg.max_position_embeddings
    result = {"accuracy": best["metrics"]["accuracy"], "metrics": best["metrics"], "best_epoch": best["epoch"],
              "select_by": fmt.select_by, "epochs": progress["epoch"], "steps": progress["step"],
              "n_train": len(data.train), "n_valid": len(data.valid), "history": progress["history"],
              "beyond_context": sum(len(s) > context for s in data.train + data.valid),
              "seconds": time.perf_counter() - start, "predictions": best["predictions"], "setup": setup}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(done, lambda p: p.write_text(json.dumps(result) + "\n"))
    shutil.rmtree(folder / "state", ignore_errors=True)
    return result


def resolve_tasks(names) -> list[str]:
    """--glue-tasks: names (or "all", or none: every task), checked, in the given order."""
    names = list(dict.fromkeys(names or ["all"]))
    if names == ["all"]:
        return list(SUBTASKS)
    unknown = [n for n in names if n not in SUBTASKS]
    if unknown:
        raise ValueError(f"--glue-tasks: unknown task {', '.join(unknown)} (choose from all, {', '.join(SUBTASKS)})")
    return names


def glue_root(data: list) -> Path:
    if len(data) != 1:
        raise ValueError(f"--data takes one folder for the glue task: the {FOLDER} folder ({DOWNLOAD})")
    return Path(data[0])


def read_tasks(data: list, tasks, limit: int = 0) -> dict[str, tuple[list[Example], list[Example]]]:
    """{task: (train rows, valid rows)} of every task, the first `limit` of each: all read before any
    fine-tuning, so that a bad or missing file stops the run at once."""
    root = glue_root(data)
    return {t: tuple(read_examples(f, t, limit) for f in task_files(root, t)) for t in resolve_tasks(tasks)}


def evaluate(model, tokenizer, data: list, tasks, settings: Settings, out) -> tuple[dict, list[dict]]:
    """(results, per-row predictions) of the (Super)GLUE tasks: `score` is the mean over tasks of the best
    epoch's valid accuracy in %, as the pipeline's calculate_results_from_pred.py computes it."""
    if settings.pool not in POOLS:
        raise ValueError(f"--pool must be one of {', '.join(POOLS)}; got {settings.pool!r}")
    examples = read_tasks(data, tasks, settings.limit)
    root, device = glue_root(data), next(model.parameters()).device
    base = {"model": model_fingerprint(model), "settings": dataclasses.asdict(settings)}
    subtasks, rows = {}, []
    for task, pair in examples.items():
        setup = {**base, "task": task, "files": [str(f.resolve()) for f in task_files(root, task)]}
        r = run_task(model, tokenizer, task, pair, settings, Path(out) / "glue" / task, setup, device)
        rows += [{"task": task, "row": i, "label": x.label, "pred": p}
                 for i, (x, p) in enumerate(zip(pair[1], r["predictions"]))]
        subtasks[task] = {k: v for k, v in r.items() if k not in ("predictions", "setup")}
    percents = {t: 100 * r["accuracy"] for t, r in subtasks.items()}
    result = {"metric": "accuracy", "score": sum(percents.values()) / len(percents), "convention": "babylm",
              "n_items": sum(r["n_valid"] for r in subtasks.values()), "pool": settings.pool,
              "uids": {t: {"n": subtasks[t]["n_valid"], "percent": p} for t, p in percents.items()},
              "subtasks": subtasks, "settings": dataclasses.asdict(settings)}
    return result, rows


def summary(result: dict) -> str:
    """eval.py's line after the glue task."""
    parts = ", ".join(f"{t} {u['percent']:.1f}" for t, u in result["uids"].items())
    return (f"glue: (Super)GLUE score {result['score']:.2f} (mean best-epoch valid accuracy % over "
            f"{len(result['uids'])} tasks: {parts}; pooling {result['pool']})")
