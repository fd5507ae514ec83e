"""Teacher answers: N child-like answers per caregiver prompt, sampled from any local causal LM.

As the llamalogue runs (Llama-3.2-3B-Instruct as the teacher; our own models and SmolLM2 work the same):
the published instruction is the system message and the caregiver line the user message, rendered with
the model's own chat template (tokenizer_config.json's Jinja `chat_template`, as transformers'
`apply_chat_template` renders it) when it has one, else in dialogue format
(`{instruction}\\n*MOT: {prompt}\\n*CHI:`); temperature 0.8, top-p 0.8, 20 new tokens; each answer is
cut at its first utterance (its first non-empty line, a `*CHI:` tag or quotes around it dropped).

The output is JSONL, one row per prompt, in the format rewards/references.py reads:

    {"prompt": "*MOT: do you want juice ?", "answers": ["yes please", ...], "logprobs": [-5.1, ...]}

`logprobs[i]` is log p_teacher(" " + answers[i] | caregiver line), exactly the quantity the teacher-
confidence reward (rewards/teacher.py) ranks a reply by, so that reward can take all N and BLEU-1 and
similarity the answers. The run is resumable: rows are appended batch by batch, a rerun keeps the rows
already written (a half-written last line is dropped) and continues; every batch of prompts is sampled
with its own seed, so an interrupted run ends with the same file as an uninterrupted one.

    python -m minitoddler.teacher --model DIR --data PROMPTS --out teacher.jsonl
    python -m minitoddler.rl.prefs --teacher teacher.jsonl --children prepared/pairs/train.jsonl --out pairs.jsonl

PROMPTS is a text file of caregiver lines (one a line) or a JSON/JSONL file of rows with a "prompt"
(prepare's pairs/, the DPO pairs); prompts are deduplicated as rewards/references.py matches them.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import load_model
from .cli import parse_config, run
from .formats import dialogue_text, id_list
from .generate import generate
from .rewards.references import prompt_key
from .rewards.teacher import TeacherReward
from .rl.prefs import json_rows
from .precision import pick_device
from .tokenizer import load_tokenizer
from .trainer import format_duration

INSTRUCTION = ("You are a young child having a conversation with your mother. When your mother says something, "
               "you should answer as a typical and natural-sounding child. Do NOT repeat her words. Instead, "
               "give a new, relevant answer that shows understanding. Keep it short and child-like.")
_TAG = re.compile(r"^\s*\*?[A-Z]{3}:\s*")


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class TeacherConfig:
    model: str = ""               # causal LM directory (HF Llama layout with tokenizer.json)
    data: str = ""                # caregiver prompts: text file, or JSON/JSONL rows with "prompt"
    out: str = "teacher.jsonl"    # JSONL file the answers are appended to (a rerun continues it)
    answers: int = 10             # answers per prompt
    instruction: str = INSTRUCTION  # "" = none
    template: str = "auto"        # auto (the model's chat template if it has one) | chat | dialogue
    temperature: float = 0.8
    top_p: float = 0.8
    max_new_tokens: int = 20
    batch_prompts: int = 8        # prompts per generation batch (x answers rows)
    limit: int = 0                # 0 = every prompt; N = the first N (after deduplication)
    device: str = "auto"
    dtype: str = "float32"        # float32 | bfloat16 (weights)
    seed: int = 0


def read_prompts(path: str | Path) -> list[str]:
    """Caregiver prompts, deduplicated by `prompt_key`, in file order; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found: give a text file of caregiver lines or a "
                                'JSON/JSONL file of {"prompt": ...} rows (prepared/pairs/train.jsonl)')
    if path.suffix in (".json", ".jsonl"):
        prompts = []
        for n, row in json_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string 'prompt'")
            prompts.append(row["prompt"].strip())
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    unique = {}
    for p in prompts:
        if prompt_key(p):
            unique.setdefault(prompt_key(p), p)
    if not unique:
        raise ValueError(f"{path}: no prompts in the file")
    return list(unique.values())


def chat_template_of(model_dir: str | Path) -> tuple[str | None, dict]:
    """The model's Jinja chat template (None if it has none) and its tokenizer_config.json."""
    path = Path(model_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    template = config.get("chat_template")
    jinja = Path(model_dir) / "chat_template.jinja"  # newer transformers keep it in its own file
    if template is None and jinja.is_file():
        template = jinja.read_text()
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template, config


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def render_prompt(template: str | None, config: dict, prompt: str, instruction: str) -> str:
    """The teacher's input text for one caregiver line: its chat template with a generation prompt, or,
    with template None, the dialogue format."""
    line = prompt_key(prompt)
    if template is None:
        return (f"{instruction}\n" if instruction else "") + dialogue_text(line)
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    messages = ([{"role": "system", "content": instruction}] if instruction else []) + \
        [{"role": "user", "content": line}]
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")))
    except TemplateError as e:
        raise ValueError(f"the model's chat template failed on a system + user conversation ({e}); "
                         "use --template dialogue or --instruction ''") from None


def first_utterance(text: str) -> str:
    """The first non-empty line, without a speaker tag or the quotes around it."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return _TAG.sub("", line).strip().strip('"').strip()


def stop_ids_of(model, tokenizer) -> list[int]:
    """End-of-turn tokens: the config's EOS id(s) and the chat end markers the vocabulary has."""
    ids = set(id_list(model.cfg.eos_token_id))
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"):
        if tokenizer.token_to_id(token) is not None:
            ids.add(tokenizer.token_to_id(token))
    return sorted(ids)


def read_done(out: Path) -> set[str]:
    """Prompt keys already in `out`; a half-written last line (an interrupted write) is cut off."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):
        with out.open("r+b") as f:
            f.truncate(good)
        print(f"note: dropped a half-written last line of {out}", file=sys.stderr)
    done = set()
    for n, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                done.add(prompt_key(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{out}:{n}: not a teacher row; this file was not written by "
                                 "minitoddler.teacher: give another --out") from None
    return done


@torch.no_grad()
def answer_batch(model, tokenizer, prompts: list[str], cfg: TeacherConfig, template, config, seed: int
                 ) -> tuple[list[list[str]], int]:
    """`cfg.answers` answers per prompt, sampled in one batch, and how many prompts were shortened."""
    context = model.cfg.max_position_embeddings - cfg.max_new_tokens
    if context < 1:
        raise ValueError(f"--max-new-tokens {cfg.max_new_tokens} fills the model's whole context "
                         f"({model.cfg.max_position_embeddings} tokens)")
    inputs, shortened = [], 0
    for p in prompts:
        ids = tokenizer.encode(render_prompt(template, config, p, cfg.instruction), add_special_tokens=False).ids
        shortened += len(ids) > context
        inputs.append(ids[-context:])  # too long: keep the end (the caregiver line and the answer cue)
    stop = stop_ids_of(model, tokenizer)
    outs = generate(model, [ids for ids in inputs for _ in range(cfg.answers)], cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, stop_ids=stop, seed=seed)
    texts = tokenizer.decode_batch([[t for t in o if t not in stop] for o in outs])
    answers = [first_utterance(t) for t in texts]
    return [answers[i * cfg.answers:(i + 1) * cfg.answers] for i in range(len(prompts))], shortened


def main(cfg: TeacherConfig) -> Path:
    if not cfg.model or not Path(cfg.model).is_dir():
        raise SystemExit("error: --model DIR is required: a causal LM directory in the HF Llama layout "
                         "with tokenizer.json (ours, SmolLM2, Llama-3.2-3B-Instruct)")
    if not cfg.data:
        raise SystemExit("error: --data PROMPTS is required: a text file of caregiver lines or a JSON/JSONL "
                         'file of {"prompt": ...} rows, e.g. prepared/pairs/train.jsonl')
    if cfg.template not in ("auto", "chat", "dialogue"):
        raise SystemExit(f"error: --template {cfg.template!r}: choose auto, chat or dialogue")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"error: --dtype {cfg.dtype!r}: choose float32 or bfloat16")
    prompts = read_prompts(cfg.data)
    prompts = prompts[:cfg.limit] if cfg.limit else prompts
    device = pick_device(cfg.device)
    model = load_model(cfg.model, device, dtype=getattr(torch, cfg.dtype))
    tokenizer = load_tokenizer(cfg.model, strict=False)
    template, config = chat_template_of(cfg.model)
    if cfg.template == "chat" and template is None:
        raise SystemExit(f"error: --template chat, but {cfg.model} has no chat_template in tokenizer_config.json")
    template = None if cfg.template == "dialogue" else template
    scorer = TeacherReward(model, tokenizer)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out)
    todo = [p for p in prompts if prompt_key(p) not in done]
    print(f"teacher {cfg.model} ({'chat template' if template else 'dialogue format'}): {len(prompts)} prompts, "
          f"{len(prompts) - len(todo)} already in {out}, {cfg.answers} answers each", file=sys.stderr)

    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), unit="prompt", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    shortened = empty = n_answers = n_new = 0
    t0 = time.time()
    with out.open("a", encoding="utf-8") as f:
        for b in range(0, len(prompts), cfg.batch_prompts):
            batch = prompts[b:b + cfg.batch_prompts]
            if all(prompt_key(p) in done for p in batch):
                continue
            answers, n = answer_batch(model, tokenizer, batch, cfg, template, config, cfg.seed + b)
            shortened += n
            rows = []
            for p, a in zip(batch, answers):
                kept = [x for x in a if x]
                empty += len(a) - len(kept)
                if prompt_key(p) in done or not kept:
                    continue
                logprobs = scorer.logprobs([p] * len(kept), kept).tolist()
                rows.append(json.dumps({"prompt": p, "answers": kept, "logprobs": logprobs}, ensure_ascii=False))
                n_answers += len(kept)
            f.write("".join(r + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
            new = len(batch) - sum(prompt_key(p) in done for p in batch)
            bar.update(new)
            n_new += new
            if not sys.stderr.isatty():
                rate = n_new / max(time.time() - t0, 1e-9)
                print(f"{min(b + cfg.batch_prompts, len(prompts))}/{len(prompts)} prompts | {rate:.3g} prompts/s | "
                      f"elapsed {format_duration(time.time() - t0)} | ETA {format_duration((len(todo) - n_new) / rate)}",
                      file=sys.stderr, flush=True)
    bar.close()
    seconds = time.time() - t0
    notes = []
    if shortened:
        notes.append(f"{shortened} prompts longer than the context were shortened from the left")
    if empty:
        notes.append(f"{empty} empty answers were left out (a prompt with no answer left gets no row)")
    print(f"wrote {out}: {n_answers} answers in {seconds:.0f}s ({n_answers / max(seconds, 1e-9):.1f} answers/s)"
          + "".join(f"; {x}" for x in notes))
    return out


if __name__ == "__main__":
    run(main, parse_config(TeacherConfig, __doc__))
