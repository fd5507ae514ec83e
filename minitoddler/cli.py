"""Command-line flags from a config dataclass, and one-line user errors.

Every field becomes `--field-name`, typed by its default; its --help text is the field's `help` metadata,
else the comment on its line in the source, else the shared text for a common name (COMMON_HELP below).
`run(main)` ends a script on a user error (a bad path, flag value or input: FileNotFoundError, the other
path OSErrors, ValueError, or SystemExit with a message) with one `error: ...` line and exit status 2;
`--debug` or MINITODDLER_DEBUG=1 shows the traceback instead. Other exceptions are bugs and raise normally.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import io
import os
import sys
import textwrap
import tokenize
import traceback
from dataclasses import MISSING, fields

# Help for fields that many scripts share and whose meaning is the same everywhere.
COMMON_HELP = {
    "out": "output directory (created; checkpoints, metrics.jsonl and the final model go here)",
    "steps": "optimizer steps in this run; the LR schedule (warmup and decay) spans exactly these",
    "lr": "peak learning rate",
    "min_lr_ratio": "the LR decays to this fraction of its peak",
    "weight_decay": "AdamW weight decay of the weight matrices (norms and biases get none)",
    "grad_clip": "clip the global gradient norm to this before each step (0 = no clipping)",
    "eval_every": "evaluate on held-out data every N steps (and at the end)",
    "eval_batches": "held-out batches per evaluation",
    "save_every": "write a resumable checkpoint every N steps (and at the end or on Ctrl-C)",
    "log_every": "print and log a progress line every N steps",
    "device": "auto | cpu | cuda | cuda:N | mps; auto = cuda, then mps, then cpu",
    "seed": "random seed (data order, sampling, initialization)",
    "compile": "torch.compile the model (slower start, faster steps on a GPU)",
    "resume": "continue from <out>/checkpoint (same settings; the data order continues exactly)",
    "lora_dropout": "dropout on the LoRA branch's input",
    "lora_targets": "comma-separated projections that get LoRA adapters (q,k,v,o,gate,up,down)",
    "system_prompt": "system message of every ChatML conversation (\"\" = none)",
    "temperature": "sampling temperature (0 = greedy)",
    "top_p": "nucleus sampling: keep the most likely tokens up to this total probability (1 = off)",
    "top_k": "sample among the k most likely tokens (0 = off)",
    "max_new_tokens": "the most tokens generated per reply",
    "tokenizer": "tokenizer directory (\"\" = the model directory)",
    "profile": "write a profiler trace of step N to <out>/trace_stepN.json (Chrome/Perfetto/TensorBoard); 0 = none",
    "report_to": "also log the metrics to tensorboard (<out>/tensorboard) or wandb (offline unless WANDB_MODE says "
                 "otherwise); \"\" = metrics.jsonl only",
}


def field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each field of dataclass `cls`, read from its source ({} without source)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    comments, indent = {}, {}  # line -> text; line -> column, for comment-only lines
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not lines[tok.start[0] - 1][:tok.start[1]].strip():
                indent[tok.start[0]] = tok.start[1]
    out = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.end_lineno  # comment-only lines indented past the field continue its comment
            while indent.get(last + 1, -1) > node.col_offset:
                last += 1
            text = " ".join(comments[n] for n in range(node.lineno, last + 1) if n in comments)
            if text:
                out[node.target.id] = text
    return out


def field_help(cls) -> dict[str, str]:
    """What each field means: metadata 'help', else its source comment, else COMMON_HELP ('' if none)."""
    comments = field_comments(cls)
    return {f.name: f.metadata.get("help") or comments.get(f.name) or COMMON_HELP.get(f.name, "")
            for f in fields(cls)}


def config_parser(cls, doc: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of dataclass `cls`; booleans are store_true switches.
    `doc` (the script's docstring: what it does, with examples) heads --help. Scripts that need more
    flags (train_rl.py's reward options) add them to it."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        text = helps[f.name].replace("%", "%%")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=text or "(switch)")
            continue
        shown = f"(default: {default!r})".replace("%", "%%")
        if isinstance(default, list):
            p.add_argument(flag, nargs="*", default=default, help=f"{text} {shown}".strip())
        elif "const" in f.metadata:  # `--flag` alone means const, `--flag VALUE` that value
            p.add_argument(flag, nargs="?", const=f.metadata["const"], type=type(default), default=default,
                           help=f"{text} {shown}".strip())
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"{text} {shown}".strip())
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback "
                   "(also MINITODDLER_DEBUG=1)")
    return p


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass `cls` from parsed args (flags that are not its fields are ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def parse_config(cls, doc: str | None = None, argv=None):
    """Parse argv into an instance of dataclass `cls`."""
    return config_from_args(cls, config_parser(cls, doc).parse_args(argv))


USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


def run(main, *args):
    """Call `main(*args)` as a script's entry point: a user error prints one line and exits with status 2
    (`--debug` anywhere in sys.argv, which is first removed from it, or MINITODDLER_DEBUG=1 re-raises it).
    Entry points that take argv read sys.argv[1:] themselves, after the removal."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("MINITODDLER_DEBUG", "") not in ("", "0")
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        return main(*args)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            raise
        if debug:
            traceback.print_exc()
            raise
        message = str(e.code)
    except USER_ERRORS as e:
        if debug:
            raise
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
    message = " ".join(message.split())
    print(f"{message if message.startswith('error') else 'error: ' + message}"
          "  (--debug or MINITODDLER_DEBUG=1 shows the traceback)", file=sys.stderr)
    sys.exit(2)
