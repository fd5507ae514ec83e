"""LLM judge: a local causal LM rates each (caregiver line, child reply) from 0 to 5.

The prompt is the llamalogue PPO judge prompt (their OLMo-2-7B-Instruct scorer, utils_ppo.py
`build_teacher_prompt`), system + user message:

    system: You are presented with a dialogue between a mother (MOT) and a child (CHI). Please rate how
            fluent the child's response is, on a scale from 0 (completely unfitting) to 5 (perfectly
            fine answer). Respond with only the number.
    user:   MOT: {prompt}\\nCHI: {reply}

rendered in ChatML (`template="chatml"`, for SmolLM2-Instruct-style judges and ours) or as plain text
(`"plain"`: system line, user lines, then a newline). Score, as llamalogue: the first number in the
judge's greedy answer (10 new tokens), clipped to [0, 5]; an answer without a digit scores 0 and is
counted (`stats()`). Option `expected=True`: instead of generating, the expectation of the digit over
the judge's next-token probabilities of "0".."5", renormalised over those six tokens.
"""
from __future__ import annotations

import re

import torch
from tokenizers import Tokenizer

from ..chatml import render_chat
from ..formats import id_list
from ..generate import generate
from ..model import ToddlerLM
from ..tokenizer import IM_END

JUDGE_SYSTEM = ("You are presented with a dialogue between a mother (MOT) and a child (CHI). Please rate how "
                "fluent the child's response is, on a scale from 0 (completely unfitting) to 5 (perfectly fine "
                "answer). Respond with only the number.")
TEMPLATES = ("chatml", "plain")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def judge_user_message(prompt: str, reply: str) -> str:
    return f"MOT: {prompt}\nCHI: {reply}"


def parse_rating(answer: str) -> float | None:
    """The first number in the answer, clipped to [0, 5]; None when there is none."""
    m = _NUMBER.search(answer)
    return None if m is None else min(max(float(m.group()), 0.0), 5.0)


class JudgeReward:
    def __init__(self, model: ToddlerLM, tokenizer: Tokenizer, template: str = "chatml", expected: bool = False,
                 max_new_tokens: int = 10, batch_size: int = 16):
        if template not in TEMPLATES:
            raise ValueError(f"unknown judge template {template!r}; choose from {TEMPLATES}")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.expected, self.max_new_tokens, self.batch_size = expected, max_new_tokens, batch_size
        self.stop_ids = set(id_list(model.cfg.eos_token_id))
        if tokenizer.token_to_id(IM_END) is not None:
            self.stop_ids.add(tokenizer.token_to_id(IM_END))
        self.unparseable = 0  # answers without a number in the last call
        if expected:
            ids = [tokenizer.encode(str(d), add_special_tokens=False).ids for d in range(6)]
            if any(len(i) != 1 for i in ids):
                raise ValueError("expected=True needs each digit 0-5 to be one token in the judge's tokenizer")
            self.digit_ids = torch.tensor([i[0] for i in ids])

    def prompt_ids(self, prompt: str, reply: str) -> list[int]:
        user = judge_user_message(prompt, reply)
        if self.template == "chatml":
            messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
            return render_chat(self.tokenizer, messages, add_generation_prompt=True).ids
        return self.tokenizer.encode(f"{JUDGE_SYSTEM}\n{user}\n").ids

    def answers(self, prompts: list[str], replies: list[str]) -> list[str]:
        """The judge's greedy answers, decoded."""
        ids = [self.prompt_ids(p, r) for p, r in zip(prompts, replies)]
        out = []
        for i in range(0, len(ids), self.batch_size):
            for completion in generate(self.model, ids[i:i + self.batch_size], self.max_new_tokens,
                                       stop_ids=tuple(self.stop_ids)):
                out.append(self.tokenizer.decode([t for t in completion if t not in self.stop_ids]))
        return out

    @torch.no_grad()
    def expected_ratings(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        ids = [self.prompt_ids(p, r) for p, r in zip(prompts, replies)]
        device = self.model.embed_tokens.weight.device
        out = []
        was_training = self.model.training
        self.model.eval()
        for i in range(0, len(ids), self.batch_size):
            rows = ids[i:i + self.batch_size]
            width = max(map(len, rows))
            batch = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):  # left padding: every row's last token in the last column
                batch[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
            # The last position only, the six digits only, to the CPU: the full (B, T, vocab) logits would be
            # ~1 GB per 16 rows at a 128k vocabulary, and copying them over would dominate the reward.
            last = self.model(batch.to(device), attention_mask=mask.to(device), logits_to_keep=1)[:, -1]
            probs = last[:, self.digit_ids.to(device)].float().softmax(-1).cpu()
            out.append(probs @ torch.arange(6, dtype=torch.float32))
        self.model.train(was_training)
        return torch.cat(out)

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        if not prompts:
            return torch.zeros(0)
        if self.expected:
            return self.expected_ratings(prompts, replies)
        ratings = [parse_rating(a) for a in self.answers(prompts, replies)]
        self.unparseable = sum(r is None for r in ratings)
        return torch.tensor([0.0 if r is None else r for r in ratings], dtype=torch.float32)

    def stats(self) -> dict:
        return {"unparseable": self.unparseable}
