"""The two formats a toddler model is spoken to in, in one place: render a caregiver line (alone, or with
the child's reply and a mask on the reply's tokens), render a whole conversation, name the tokens that
end a reply, and decode a reply. SFT, GRPO/PPO, DPO, the teacher, chat, serve and the generation eval
all go through here.

    chatml    SmolLM2-Instruct's ChatML (design.md): a system prompt, the caregiver line as the user turn
              `Caregiver: …`, the child's reply as the assistant turn. A reply ends at <|im_end|> or EOS.
    dialogue  CHAT speaker lines, as the llamalogue corpus writes turns: `*MOT: …\\n*CHI: …` after the
              model's BOS. A reply ends at the first token that holds a line break, or at EOS.

"chat" is accepted as another name for "chatml" (older commands of chat, serve and eval.py spell it so).
"""
from __future__ import annotations

import re

from .chatml import caregiver_chat, render_chat
from .tokenizer import DEFAULT_SYSTEM_PROMPT, IM_END

FORMATS = ("chatml", "dialogue")
ALIASES = {"chat": "chatml"}
USER_PREFIX = "Caregiver: "  # put before each caregiver line in ChatML, as SFT trains
SPEAKER_TAG = re.compile(r"^\s*\*[A-Z]{2,4}:\s*")  # "*CHI: " at the start of a CHAT-style line


def check_format(fmt: str) -> str:
    """The canonical name of a format ("chat" -> "chatml"); ValueError naming the choices otherwise."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def first_id(value: int | list[int] | None) -> int | None:
    """One id out of a config's `bos_token_id` (an int, a list of ints, or None)."""
    return value[0] if isinstance(value, list) else value


def id_list(value: int | list[int] | None) -> list[int]:
    """A config's `eos_token_id` (an int, a list of ints, or None) as a list."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if v is not None]


def dialogue_text(prompt: str, reply: str | None = None) -> str:
    """`*MOT: {prompt}\\n*CHI:`, and with a reply ` {reply}\\n` after it."""
    head = f"*MOT: {prompt}\n*CHI:"
    return head if reply is None else f"{head} {reply}\n"


def render_exchange(tokenizer, prompt: str, reply: str | None, fmt: str,
                    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, bos_id: int | None = None
                    ) -> tuple[list[int], list[int]]:
    """Token ids of one caregiver line (+ the child's reply) and a 0/1 mask on the reply's tokens with
    its end marker (<|im_end|> in chatml, the line break in dialogue). `reply=None` gives the prompt that
    asks for a reply (ChatML's generation prompt, or `*MOT: …\\n*CHI:`), mask all 0. `system_prompt` is
    used by chatml (None: no system turn), `bos_id` by dialogue (None: no BOS)."""
    if check_format(fmt) == "chatml":
        chat = render_chat(tokenizer, caregiver_chat(prompt, reply, system_prompt),
                           add_generation_prompt=reply is None, default_system=None)
        return chat.ids, chat.mask
    head = dialogue_text(prompt)
    enc = tokenizer.encode(dialogue_text(prompt, reply), add_special_tokens=False)
    mask = [int(a >= len(head)) for a, _ in enc.offsets]
    bos = [bos_id] if bos_id is not None else []
    return bos + list(enc.ids), [0] * len(bos) + mask


def prompt_ids(tokenizer, prompt: str, fmt: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
               bos_id: int | None = None) -> list[int]:
    """Token ids that ask the model for the child's reply to one caregiver line."""
    return render_exchange(tokenizer, prompt, None, fmt, system_prompt, bos_id)[0]


def render_conversation(tokenizer, messages: list[dict], fmt: str, bos_id: int | None = None,
                        user_prefix: str = USER_PREFIX) -> list[int]:
    """Token ids that ask for the next assistant reply to `messages` (role/content dicts). ChatML puts
    `user_prefix` before each user turn that lacks it; dialogue writes user turns as `*MOT:` and
    assistant turns as `*CHI:` lines and has no place for a system prompt."""
    if check_format(fmt) == "chatml":
        messages = [{"role": m["role"], "content": user_prefix + m["content"]
                     if m["role"] == "user" and not m["content"].startswith(user_prefix) else m["content"]}
                    for m in messages]
        return render_chat(tokenizer, messages, add_generation_prompt=True, default_system=None).ids
    lines = [f"*{'MOT' if m['role'] == 'user' else 'CHI'}: {m['content']}" for m in messages
             if m["role"] != "system"]
    ids = tokenizer.encode("\n".join(lines + ["*CHI:"]), add_special_tokens=False).ids
    return ([bos_id] if bos_id is not None else []) + list(ids)


def stop_ids(tokenizer, fmt: str, eos: int | list[int] | None) -> list[int]:
    """Tokens that end a reply: EOS, and <|im_end|> (chatml) or every token holding a line break (dialogue)."""
    stops = id_list(eos)
    if check_format(fmt) == "chatml":
        im_end = tokenizer.token_to_id(IM_END)
        if im_end is None:
            raise ValueError("the tokenizer has no <|im_end|> token; use --format dialogue, or give the model "
                             "ChatML tokens (minitoddler.chatml.add_chat_tokens; train_sft.py adds them)")
        stops.append(im_end)
    else:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        stops += [i for i in range(size) if "\n" in tokenizer.decode([i], skip_special_tokens=False)]
    return sorted(set(stops))


def decode_reply(tokenizer, ids: list[int], fmt: str, one_line: bool = False) -> str:
    """A completion's text, special tokens dropped. In dialogue, or with `one_line` (one utterance: what
    the metrics and rewards score), only its first line, without a speaker tag the model wrote itself."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if one_line or check_format(fmt) == "dialogue":
        text = SPEAKER_TAG.sub("", text.split("\n")[0])
    return text.strip()
