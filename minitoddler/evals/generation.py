"""Generation metrics: sample child replies to caregiver prompts and measure how toddler-like they are.

Prompts come from a file (default: the ~50 caregiver lines in prompts.txt beside this file; a
`prompt<TAB>gold reply` line or a dialogue-pairs JSON adds gold child replies). Each prompt is put to
the model in one of the two formats of formats.py (chatml, or dialogue: `*MOT: …\\n*CHI:`), and the sampled
replies are measured: words per reply, MLU in words, share of single-sentence replies, type/token
ratio, mean age of acquisition (Kuperman norms) and share of CDI words of the words used, BLEU-1 (and
MiniLM similarity) to gold replies, and RM-1 child-likeness / RM-2 coherence when those models are given;
then the toddler report card (report_card.py): the model's replies and the real children's (the gold
replies) measured side by side, as model/… and children/… keys.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..formats import check_format
from ..generate import generate_replies
from .minimal_pairs import json_items
from .report_card import (cdi_share, length_histogram, mean_aoa, mean_card, mlu_words, report_card,
                          side_by_side, type_token_ratio, words_per_reply)
from .words import SPEAKER_TAG, read_aoa, read_cdi_words, utterances, words

DEFAULT_PROMPTS = Path(__file__).with_name("prompts.txt")
GOLD_KEYS = ("chosen", "gold", "response", "reply")


@dataclass
class Prompt:
    text: str
    gold: str = ""  # a real child's reply to this line, when known


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Caregiver prompts from a text file (one a line, optional `<TAB>gold reply`, # comments) or a
    JSON/JSONL list of {"prompt": …, "chosen"|"gold"|"response": …}; speaker tags (`*MOT: `) are dropped."""
    path = Path(path) if path is not None else DEFAULT_PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a prompt file with --data (one caregiver line a line)")
    prompts = []
    if path.suffix in (".json", ".jsonl"):
        for line_no, item in json_items(path):
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
                raise ValueError(f"{path}:{line_no}: each item needs a non-empty 'prompt' string")
            gold = next((item[k] for k in GOLD_KEYS if isinstance(item.get(k), str)), "")
            prompts.append(Prompt(SPEAKER_TAG.sub("", item["prompt"]).strip(), SPEAKER_TAG.sub("", gold).strip()))
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                text, _, gold = line.partition("\t")
                prompts.append(Prompt(SPEAKER_TAG.sub("", text).strip(), SPEAKER_TAG.sub("", gold).strip()))
    if not prompts:
        raise ValueError(f"{path}: no prompts found")
    return prompts


# --- metrics ---------------------------------------------------------------------------------------

def bleu1(reply: str, gold: str) -> float:
    """Sentence BLEU-1 of a reply against one gold reply: clipped unigram precision x brevity penalty
    (what nltk's sentence_bleu gives with weights (1,))."""
    hyp, ref = words(reply), words(gold)
    if not hyp or not ref:
        return 0.0
    matches = sum((Counter(hyp) & Counter(ref)).values())
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * matches / len(hyp)


def text_metrics(replies: list[str], aoa: dict[str, float] | None = None,
                 cdi: set[str] | None = None) -> dict:
    """Length, sentence and vocabulary measures of a list of replies."""
    per_reply = [utterances(r) for r in replies]
    tokens = [w for r in replies for w in words(r)]
    m = {
        "n_replies": len(replies),
        "empty_share": sum(not u for u in per_reply) / len(replies),
        "words_per_reply": words_per_reply(replies),
        "mlu_words": mlu_words(replies),
        "single_sentence_share": sum(len(u) == 1 for u in per_reply) / len(replies),
        "type_token_ratio": type_token_ratio(replies),
    }
    if aoa is not None:
        m["mean_aoa_years"] = mean_aoa(replies, aoa)
        m["aoa_coverage"] = sum(w in aoa for w in tokens) / len(tokens) if tokens else 0.0
    if cdi is not None:
        m["cdi_word_share"] = cdi_share(replies, cdi)
    return m


def model_scores(prompts: list[str], replies: list[str], golds: list[str], rm1: str | None = None,
                 rm2: str | None = None, similarity_model: str | None = None, device: str = "cpu") -> dict:
    """Mean RM-1 (child-likeness of the reply), RM-2 (coherence of prompt and reply) and MiniLM cosine
    similarity to the gold reply, for the models whose directories are given."""
    if not (rm1 or rm2 or similarity_model):
        return {}
    from ..rewards.bert import load_bert  # only needed, and only imported, when a model is given

    scores = {}
    if rm1:
        scores["rm1_childlike"] = load_bert(rm1, device=device).score(replies).float().mean().item()
    if rm2:
        scores["rm2_coherence"] = load_bert(rm2, device=device).score(prompts, replies).float().mean().item()
    pairs = [(r, g) for r, g in zip(replies, golds) if g]
    if similarity_model and pairs:
        encoder = load_bert(similarity_model, device=device)
        a = encoder.embed([r for r, _ in pairs])
        b = encoder.embed([g for _, g in pairs])
        scores["similarity_to_gold"] = (a * b).sum(-1).float().mean().item()
    return scores


def toddler_report_card(prompts: list[Prompt], rounds: list[list[str]], aoa=None, cdi=None, rm1=None, rm2=None,
                        device: str = "cpu", histogram=None) -> tuple[dict, list[str], Path | None]:
    """The report card (report_card.py) of the model's replies beside the real children's replies to the same
    lines, the prompts' gold replies: (model/... and children/... keys, one-line notes on what was skipped,
    the reply-length PNG when `histogram` names one and matplotlib is installed). The card covers the lines
    with a gold reply (every line, and no children's card, when none has one). `rounds` holds one reply per
    prompt per sampling round; each round gets a card and the model's is their mean, so both cards are over as
    many replies. RM-1 / RM-2 (mean score) when their model directories are given."""
    lines = [i for i, p in enumerate(prompts) if p.gold] or list(range(len(prompts)))
    texts = [prompts[i].text for i in lines]
    golds = [prompts[i].gold for i in lines if prompts[i].gold]
    per_round = [[replies[i] for i in lines] for replies in rounds]
    model = mean_card([report_card(texts, replies, aoa, cdi) for replies in per_round])
    children = report_card(texts, golds, aoa, cdi) if golds else None
    flat = [r for replies in per_round for r in replies]
    model.update(model_scores(texts * len(per_round), flat, [""] * len(flat), rm1, rm2, device=device))
    if children:
        children.update(model_scores(texts, golds, golds, rm1, rm2, device=device))
    notes = []
    if not (rm1 and rm2):
        skipped = " and ".join(name for name, path in (("RM-1", rm1), ("RM-2", rm2)) if not path)
        notes.append(f"report card: {skipped} skipped (no --rm1 / --rm2 model directory given)")
    if not golds:
        notes.append("report card: no children's column (the prompts carry no real child replies; e.g. --data "
                     "../shared/data/eval/dialogue-minimal-pairs/dialogue_eval_words.json has them)")
    png = None
    if histogram is not None:
        png, note = length_histogram(histogram, flat, golds)
        notes += [note] if note else []
    return side_by_side(model, children), notes, png


@torch.no_grad()
def evaluate_generation(model, tokenizer, prompts: list[Prompt], fmt: str = "chatml", samples: int = 1,
                        max_new_tokens: int = 48, temperature: float = 0.7, top_p: float | None = 0.9,
                        top_k: int | None = None, seed: int = 0, aoa_path=None, cdi_path=None, rm1=None,
                        rm2=None, similarity_model=None, n_examples: int = 10,
                        device: str = "cpu", histogram=None) -> tuple[dict, list[dict]]:
    """Sample `samples` replies per prompt and measure them, with the report card (model/..., children/...
    keys in the metrics; `histogram`: a PNG path for the reply lengths); returns (results, one row per reply)."""
    fmt = check_format(fmt)
    aoa = read_aoa(aoa_path) if aoa_path else None
    cdi = read_cdi_words(cdi_path) if cdi_path else None
    asked = [p for p in prompts for _ in range(samples)]
    rounds = []
    for k in range(samples):
        rounds.append(generate_replies(model, tokenizer, [p.text for p in prompts], fmt,
                                       max_new_tokens=max_new_tokens, seed=seed + 1_000_003 * k, one_line=True,
                                       temperature=temperature, top_p=top_p, top_k=top_k))
    replies = [rounds[k][i] for i in range(len(prompts)) for k in range(samples)]
    golds = [p.gold for p in asked]

    results = {"format": fmt, "n_prompts": len(prompts), "samples_per_prompt": samples,
               "temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens,
               "metrics": text_metrics(replies, aoa, cdi)}
    with_gold = [(r, g) for r, g in zip(replies, golds) if g]
    if with_gold:
        results["metrics"]["bleu1_to_gold"] = sum(bleu1(r, g) for r, g in with_gold) / len(with_gold)
        results["gold_reference"] = text_metrics([p.gold for p in prompts if p.gold], aoa, cdi)
    results["metrics"].update(model_scores([p.text for p in asked], replies, golds, rm1, rm2,
                                           similarity_model, device))
    card, results["report_card_notes"], png = toddler_report_card(prompts, rounds, aoa, cdi, rm1, rm2, device,
                                                                  histogram)
    results["metrics"].update(card)
    if png is not None:
        results["length_histogram"] = str(png)
    rows = [{"prompt": p.text, "reply": r, "gold": p.gold} for p, r in zip(asked, replies)]
    results["examples"] = rows[:n_examples]
    return results, rows
