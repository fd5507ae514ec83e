"""Teacher confidence: is the reply as likely, under a teacher LM, as the teacher's own answers?

As the llamalogue PPO "rank" reward (their Llama-3.2-3B "mom" model): the summed log-probability of
the reply given the caregiver line, ell = log p_teacher(" " + reply | prompt), is ranked among the
same quantity for the teacher's own answers to that prompt (normally 10):

    rank = #{teacher answers a with log p(a) <= ell} / #answers,   reward = 2 * rank - 1  in [-1, 1]

An empty reply scores -0.5 (llamalogue's fallback). The prompt is the caregiver line without its
`*MOT:` tag, tokenized without special tokens; the reply (and each answer) is tokenized as " " + text,
also without special tokens. The answers come from a references file ({prompt, answers}; see
references.py) or, without one, are sampled from the teacher itself on the fly (`samples` of them,
continuing the same prompt text, cut at the first newline); their log-probabilities are computed
once per prompt and kept.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer

from ..formats import id_list
from ..generate import generate
from ..logprobs import sequence_logprobs
from ..model import ToddlerLM
from .references import answers_for, prompt_key

EMPTY_REPLY_REWARD = -0.5


def rank_reward(reply_logprob: float, answer_logprobs: list[float]) -> float:
    rank = sum(lp <= reply_logprob for lp in answer_logprobs) / len(answer_logprobs)
    return 2 * rank - 1


class TeacherReward:
    def __init__(self, model: ToddlerLM, tokenizer: Tokenizer, references: dict[str, list[str]] | None = None,
                 samples: int = 10, temperature: float = 1.0, top_p: float = 0.9, max_new_tokens: int = 20,
                 batch_size: int = 32, seed: int = 0):
        self.model, self.tokenizer, self.references = model, tokenizer, references
        self.samples, self.temperature, self.top_p = samples, temperature, top_p
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
        self._answer_logprobs: dict[str, list[float]] = {}

    def prefix(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt_key(prompt), add_special_tokens=False).ids

    def continuation(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def logprobs(self, prompts: list[str], texts: list[str]) -> torch.Tensor:
        """log p(" " + text | prompt) under the teacher, one per pair."""
        return sequence_logprobs(self.model, [self.prefix(p) for p in prompts],
                                 [self.continuation(t) for t in texts], batch_size=self.batch_size)

    def sample_answers(self, prompt: str) -> list[str]:
        ids = self.prefix(prompt) or [self.model.cfg.bos_token_id or 0]
        stop = tuple(id_list(self.model.cfg.eos_token_id))
        outs = generate(self.model, [ids] * self.samples, self.max_new_tokens, temperature=self.temperature,
                        top_p=self.top_p, stop_ids=stop, seed=self.seed)
        answers = [self.tokenizer.decode([t for t in o if t not in stop]).split("\n")[0].strip() for o in outs]
        answers = [a for a in answers if a]
        if not answers:
            raise ValueError(f"the teacher produced only empty answers for {prompt_key(prompt)!r}")
        return answers

    def answer_logprobs(self, prompts: list[str]) -> list[list[float]]:
        """The log-probabilities of each prompt's teacher answers, computed once per prompt."""
        new = list(dict.fromkeys(prompt_key(p) for p in prompts if prompt_key(p) not in self._answer_logprobs))
        if new:
            answers = answers_for(self.references, new) if self.references is not None \
                else [self.sample_answers(p) for p in new]
            flat_prompts = [p for p, a in zip(new, answers) for _ in a]
            flat = self.logprobs(flat_prompts, [x for a in answers for x in a]).tolist()
            for p, a in zip(new, answers):
                self._answer_logprobs[p], flat = flat[:len(a)], flat[len(a):]
        return [self._answer_logprobs[prompt_key(p)] for p in prompts]

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        rewards = torch.full((len(replies),), EMPTY_REPLY_REWARD)
        keep = [i for i, r in enumerate(replies) if r.strip()]
        if keep:
            ours = self.logprobs([prompts[i] for i in keep], [replies[i] for i in keep]).tolist()
            theirs = self.answer_logprobs([prompts[i] for i in keep])
            for i, lp, answers in zip(keep, ours, theirs):
                rewards[i] = rank_reward(lp, answers)
        return rewards
