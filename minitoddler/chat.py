"""Talk to a model in the terminal: the caregiver types, the toddler answers.

    python -m minitoddler.chat --model runs/sft/final
    printf 'hi sweetie\\nwhat is that\\n/quit\\n' | python -m minitoddler.chat --model runs/sft/final

Two prompt formats (formats.py). "chatml": our SFT models, SmolLM2-Instruct, a system prompt first and
each caregiver line as a user turn `Caregiver: …` (design.md). "dialogue": CHAT speaker lines, `*MOT: …`
/ `*CHI: …`, for llamalogue-style models that have no chat template. The history is kept within the
context window: the oldest turns are dropped first, never the system prompt. `/reset` starts over,
`/quit` (or end of input) ends. The history fitting and study log here are shared with serve.py.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from .checkpoint import load_model
from .cli import parse_config, run
from .formats import USER_PREFIX, check_format, decode_reply, first_id, render_conversation, stop_ids
from .generate import generate
from .precision import pick_device, resolve_dtype
from .tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class ChatConfig:
    model: str = ""                            # model directory (HF Llama layout with tokenizer.json)
    format: str = "chatml"                     # chatml | dialogue (*MOT:/*CHI: lines)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # chatml only; "" for none
    user_prefix: str = USER_PREFIX             # put before each caregiver line (chatml), as in SFT
    temperature: float = 0.7                   # 0 = greedy
    top_p: float = 0.9
    top_k: int = 0                             # sample among the k most likely tokens only; 0 = off
    max_new_tokens: int = 32
    seed: int = -1                             # -1: unseeded; else turn i samples with seed + i
    device: str = "auto"
    dtype: str = "auto"                        # auto | fp32 | bf16 (bf16 weights); auto = bf16 where the GPU
                                               # or CPU computes it natively
    log: str = ""                              # append every exchange to this JSONL file


def load(model_dir: str, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32):
    """The model (eval mode, weights in `dtype`) and its tokenizer (any tokenizer.json: ours, SmolLM2's,
    llamalogue's)."""
    model = load_model(model_dir, pick_device(device), dtype).eval()
    return model, load_tokenizer(model_dir, strict=False)


def fit_prompt(tokenizer, messages: list[dict], fmt: str, room: int, bos_id: int | None = None,
               user_prefix: str = USER_PREFIX) -> tuple[list[int], int]:
    """The prompt ids for `messages` in at most `room` tokens, and how many messages were dropped for it.

    Leading system messages always stay; the oldest other turns go first (a conversation never starts
    with a reply whose question was dropped). Raises ValueError when even the last message does not fit.
    """
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    turns = list(messages[head:])
    while True:
        ids = render_conversation(tokenizer, messages[:head] + turns, fmt, bos_id, user_prefix)
        if len(ids) <= room:
            return ids, len(messages) - head - len(turns)
        if len(turns) <= 1:
            raise ValueError(f"the system prompt and the last message take {len(ids)} tokens, more than the "
                             f"{room} the context leaves after the reply's tokens; shorten them or ask for "
                             "fewer tokens")
        turns.pop(0)
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns.pop(0)


class StudyLog:
    """Appends one JSON line per exchange, flushed at once, so that Ctrl-C or a crash loses nothing."""

    def __init__(self, path: str):
        self.path, self.lock = path, threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def main(argv=None) -> None:
    cfg = parse_config(ChatConfig, __doc__, argv)
    if not cfg.model:
        sys.exit("--model DIR is required: a model directory such as runs/sft/final")
    device = pick_device(cfg.device)
    precision = resolve_dtype(cfg.dtype, device)
    model, tokenizer = load(cfg.model, device, precision.infer_dtype)
    cfg.format = check_format(cfg.format)
    stops = stop_ids(tokenizer, cfg.format, model.cfg.eos_token_id)  # refuses chatml without <|im_end|>
    bos = first_id(model.cfg.bos_token_id)
    context = model.cfg.max_position_embeddings
    max_new = min(cfg.max_new_tokens, context - 1)
    log = StudyLog(cfg.log) if cfg.log else None
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt and cfg.format == "chatml" else []
    history = list(system)
    interactive = sys.stdin.isatty()
    print(f"{cfg.model}: format {cfg.format}, context {context} tokens, dtype {precision}. Type a caregiver "
          "line; /reset starts over, /quit ends.", file=sys.stderr)
    turn = 0
    while True:
        try:
            line = input("caregiver> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and not line:
            break  # end of piped input
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/reset":
            history = list(system)
            print("(new conversation)", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line}; /reset or /quit", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        try:
            ids, _ = fit_prompt(tokenizer, history, cfg.format, context - max_new, bos, cfg.user_prefix)
        except ValueError as e:
            history.pop()
            print(f"too long: {e}", file=sys.stderr)
            continue
        seed = cfg.seed + turn if cfg.seed >= 0 else None
        start = time.time()
        out = generate(model, [ids], max_new, temperature=cfg.temperature, top_k=cfg.top_k or None,
                       top_p=cfg.top_p, stop_ids=stops, seed=seed)[0]
        reply = decode_reply(tokenizer, out, cfg.format)
        history.append({"role": "assistant", "content": reply})
        print(f"toddler: {reply}", flush=True)
        if log:
            log.write({"time": datetime.now(timezone.utc).isoformat(), "id": f"turn-{turn}",
                       "messages": history[:-1], "reply": reply,
                       "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                                    "max_tokens": max_new, "seed": seed},
                       "latency_s": round(time.time() - start, 4)})
        turn += 1
    if interactive:
        print(file=sys.stderr)
    if log:
        log.close()


if __name__ == "__main__":
    run(main)
