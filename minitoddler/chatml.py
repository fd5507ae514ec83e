"""ChatML rendering with an assistant-only loss mask, and adding the ChatML tokens to a base model.

The format is SmolLM2-Instruct's (design.md): every message is `<|im_start|>{role}\\n{content}<|im_end|>\\n`,
a conversation without a system message gets the template's default one in front, and the generation
prompt is `<|im_start|>assistant\\n`. `render_chat` builds that text itself, tokenizes it in one piece
(as `transformers`' `apply_chat_template` does) and marks, from the tokens' character offsets, the
tokens a model should learn to produce: each assistant message's content and its closing `<|im_end|>`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from .tokenizer import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, IM_END, IM_START, load_tokenizer

ROLES = ("system", "user", "assistant")


@dataclass
class RenderedChat:
    ids: list[int]
    mask: list[int]     # 1 on assistant content tokens and their closing <|im_end|>, else 0
    message: list[int]  # per token: index in `messages` of the message whose content it is; -1 for template
                        # tokens (role headers, <|im_start|>, <|im_end|>, newlines, an inserted default system)
    text: str


def caregiver_chat(prompt: str, response: str | None = None,
                   system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict]:
    """The toddler conversation for one caregiver line (design.md): user = `Caregiver: …`, assistant = the child."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": f"Caregiver: {prompt}"})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def render_chat(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                default_system: str | None = DEFAULT_SYSTEM_PROMPT) -> RenderedChat:
    """Token ids, loss mask and per-token message index of a conversation in ChatML.

    `default_system` is what the chat template inserts when the first message is not a system message
    (ours: DEFAULT_SYSTEM_PROMPT; SmolLM2's: see `template_system_prompt`); None inserts nothing.
    """
    for i, m in enumerate(messages):
        if not {"role", "content"} <= set(m) or m["role"] not in ROLES or not isinstance(m["content"], str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
    if messages and messages[0]["role"] != "system" and default_system is not None:
        messages = [{"role": "system", "content": default_system}, *messages]
        shift = 1
    else:
        shift = 0
    text, spans = "", []  # spans: (start, end, message index, is_assistant) of each content(+<|im_end|>)
    for i, m in enumerate(messages):
        text += f"{IM_START}{m['role']}\n"
        start = len(text)
        text += m["content"] + IM_END
        spans.append((start, len(text), i - shift, m["role"] == "assistant"))
        text += "\n"
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"

    enc = tokenizer.encode(text, add_special_tokens=False)
    ids, mask, message = list(enc.ids), [0] * len(enc.ids), [-1] * len(enc.ids)
    for t, (a, b) in enumerate(enc.offsets):
        for start, end, index, is_assistant in spans:
            if start <= a and b <= end and b > a:
                mask[t] = int(is_assistant)
                message[t] = index if b <= end - len(IM_END) else -1  # <|im_end|> is template, not content
            elif a < start < b or a < end < b:
                raise ValueError(f"token {tokenizer.id_to_token(ids[t])!r} crosses a message boundary in "
                                 f"{text!r}; this tokenizer merges across ChatML markup")
    return RenderedChat(ids, mask, message, text)


def template_system_prompt(tokenizer_dir: str | Path) -> str | None:
    """The default system prompt that `tokenizer_dir`'s ChatML chat_template inserts (None: it inserts none).

    Reads the literal `<|im_start|>system\\n…<|im_end|>` out of the template; templates that are not
    ChatML, or build the default from variables, are refused with a message saying what to do.
    """
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a tokenizer directory needs tokenizer_config.json "
                                "with a chat_template")
    template = json.loads(path.read_text()).get("chat_template")
    jinja = Path(tokenizer_dir) / "chat_template.jinja"  # newer transformers keep it in its own file
    if template is None and jinja.is_file():
        template = jinja.read_text()
    if not isinstance(template, str) or IM_START not in template or IM_END not in template:
        raise ValueError(f"{path}: no ChatML chat_template (<|im_start|>/<|im_end|>); add the ChatML tokens "
                         "with minitoddler.chatml.add_chat_tokens, which writes minitoddler's template")
    found = re.findall(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template, flags=re.S)
    if not found:
        return None
    if len(found) > 1 or re.search(r"(?<!\\)'|\{\{|\{%", found[0]):
        raise ValueError(f"{path}: cannot read a literal default system prompt from the chat_template; "
                         "pass the system message explicitly")
    return found[0].replace("\\'", "'").replace("\\\\", "\\")


def chat_template(system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """minitoddler's ChatML template (tokenizer.CHAT_TEMPLATE) with `system_prompt` as its default."""
    escaped = system_prompt.replace("\\", "\\\\").replace("'", "\\'")  # inside a Jinja '...' literal
    return CHAT_TEMPLATE.replace(DEFAULT_SYSTEM_PROMPT, escaped)


def resize_token_embeddings(model: nn.Module, vocab_size: int, new_rows: list[int]) -> None:
    """Grow the (tied or untied) embedding and lm_head to `vocab_size` rows (in place); the rows listed
    in `new_rows` (and any beyond the old size) start at the mean of the old rows, so the new tokens
    begin as an "average word" rather than noise that dominates the logits."""
    old = model.embed_tokens.weight
    n_old = old.shape[0]
    if vocab_size < n_old:
        raise ValueError(f"cannot shrink the vocabulary from {n_old} to {vocab_size}")
    keep = [i for i in range(n_old) if i not in set(new_rows)]

    def grown(weight: torch.Tensor) -> nn.Parameter:
        w = torch.empty(vocab_size, weight.shape[1], dtype=weight.dtype, device=weight.device)
        w[:n_old] = weight.detach()
        w[sorted(set(new_rows) | set(range(n_old, vocab_size)))] = weight.detach()[keep].mean(0)
        return nn.Parameter(w)

    model.embed_tokens.weight = grown(old)
    model.embed_tokens.num_embeddings = vocab_size
    if model.cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    else:
        model.lm_head.weight = grown(model.lm_head.weight)
    model.lm_head.out_features = vocab_size
    model.cfg.vocab_size = vocab_size


def add_chat_tokens(model: nn.Module, tokenizer_dir: str | Path, out_dir: str | Path | None,
                    system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[str]:
    """Give a base model and its tokenizer the ChatML tokens if they lack them; returns those added.

    Resizes `model`'s embeddings in place (new rows = mean embedding) and, unless `out_dir` is None,
    writes the tokenizer there with minitoddler's ChatML chat_template, whose default system prompt is
    `system_prompt` (so `apply_chat_template` renders conversations as the model was trained).
    """
    tokenizer_dir = Path(tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir, strict=False)
    missing = [t for t in (IM_START, IM_END) if tok.token_to_id(t) is None]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    new_ids = [tok.token_to_id(t) for t in missing]
    needed = tok.get_vocab_size(with_added_tokens=True)
    if missing or needed > model.cfg.vocab_size:
        resize_token_embeddings(model, max(needed, model.cfg.vocab_size), new_ids)
    if out_dir is None:
        return missing

    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config["chat_template"] = chat_template(system_prompt)
    for t, i in zip(missing, new_ids):
        config.setdefault("added_tokens_decoder", {})[str(i)] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return missing
