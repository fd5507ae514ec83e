"""RM-1 child-likeness: does a reply sound like a 2-3-year-old? Sigmoid of a BERT classifier's one logit
on the reply alone (max 32 tokens), as the released Toddler-LLM reward (a cross-encoder on
bert-base-uncased).

Training data, from CHILDES transcripts (the released RM-1 was trained on CHILDES itself):
- every target-child utterance, with a soft label from the child's age in months, piecewise linear
  through these points and flat outside:

      age (months)   12    35 (2;11, the focus age)   36     72 (6;0)
      label          1.0   0.75                       0.25   0.0

  so the youngest children are ~1.0, falling to 0.75 at the focus age; from 3;0 on, older children
  start at 0.25 and fall to 0.0 at six. Utterances without a known age are skipped;
- adult utterances (caregivers, investigators and every other declared speaker who is not a child,
  as the corpus builder defines a caregiver) with label 0, so that the model learns what adult speech
  sounds like: without them an adult-sounding reply is a point the model has never seen, and RL on an
  adult base model gets no signal against it. Balance: in each transcript at most `adult_ratio` adult
  utterances per target-child utterance are kept, drawn at random (default 1.0: as many adult as
  child rows where the adults said enough, about the natural mix of CHILDES; 0 trains on children
  only). Per transcript, so that every held-out transcript is balanced too. Other children's speech
  (siblings, playmates) is left out.

Train with `python -m minitoddler.rewards.train --kind childlike`; its held-out report includes the ROC
AUC between target-child utterances under 3;0 and adult utterances (`val_auc`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.chat import read_chat
from ..data.prepare import _is_caregiver
from .bert import Bert
from .length import cha_files

MAX_LENGTH = 32
AGE_POINTS = (12.0, 35.0, 36.0, 72.0)
LABEL_POINTS = (1.0, 0.75, 0.25, 0.0)
ADULT_RATIO = 1.0
YOUNG_MONTHS = 36.0  # the AUC compares target children under 3;0 with adults
PROBES = ("me carry bag", "Certainly! Here is a detailed explanation of the process.")


def age_label(age_months: float) -> float:
    """Soft child-likeness label of an utterance by a child of this age (see the module docstring)."""
    return float(np.interp(age_months, AGE_POINTS, LABEL_POINTS))


@dataclass
class ChildesRows:
    """RM-1 training rows, one per utterance; groups (transcripts) are the held-out unit."""
    texts: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    adult: list[bool] = field(default_factory=list)
    ages: list[float | None] = field(default_factory=list)  # target child's age (months); None for adults
    skipped: int = 0          # target-child utterances without a known age
    adults_available: int = 0  # adult utterances before the per-transcript balancing

    def add(self, text: str, label: float, group: str, adult: bool, age: float | None) -> None:
        self.texts.append(text)
        self.labels.append(label)
        self.groups.append(group)
        self.adult.append(adult)
        self.ages.append(age)

    def auc_classes(self) -> list[int | None]:
        """Per row: 1 for a target child under 3;0, 0 for an adult, None for older children."""
        return [0 if a else 1 if age < YOUNG_MONTHS else None for a, age in zip(self.adult, self.ages)]


def childes_examples(paths, adult_ratio: float = ADULT_RATIO, seed: int = 0) -> ChildesRows:
    """RM-1 rows from CHILDES .cha files or directories: target-child utterances labelled by age, and
    at most `adult_ratio` adult utterances (label 0) per child utterance of each transcript."""
    if adult_ratio < 0:
        raise ValueError(f"adult_ratio must be >= 0, got {adult_ratio}")
    rows, rng = ChildesRows(), random.Random(seed)
    for path in cha_files(paths):
        transcript = read_chat(path)
        child = transcript.target_child
        children, adults = [], []
        for u in transcript.utterances:
            if not u.text:
                continue
            if u.speaker == child:
                if u.age is None:
                    rows.skipped += 1
                else:
                    children.append(u)
            elif _is_caregiver(u.role):
                adults.append(u)
        rows.adults_available += len(adults)
        keep = min(len(adults), round(adult_ratio * len(children)))
        adults = [adults[i] for i in sorted(rng.sample(range(len(adults)), keep))]
        for u in children:
            rows.add(u.text, age_label(u.age), str(path), False, u.age)
        for u in adults:
            rows.add(u.text, 0.0, str(path), True, None)
    return rows


class ChildlikeReward:
    """RM-1 as a reward: P(child-like) of each reply, in [0, 1] (prompts are not used)."""

    def __init__(self, model: Bert, batch_size: int = 64):
        model.max_length = min(MAX_LENGTH, model.cfg.max_position_embeddings)
        self.model, self.batch_size = model, batch_size

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        return self.model.score(list(replies), batch_size=self.batch_size)
