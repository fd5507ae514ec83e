"""Generation metrics: sample child replies to caregiver prompts and measure how toddler-like they are.

Prompts come from a file (default: the ~50 caregiver lines in prompts.txt beside this file; a
`prompt<TAB>gold reply` line or a dialogue-pairs JSON adds gold child replies). Each prompt is put to
the model as a ChatML conversation (format "chat", design.md) or as a dialogue line
(`*MOT: …\\n*CHI:`, format "dialogue", how the pretraining corpus writes turns), and the sampled
replies are measured: words per reply, MLU in words, share of single-sentence replies, type/token
ratio, mean age of acquisition (Kuperman norms) and share of CDI words of the words used, BLEU-1 (and
MiniLM similarity) to gold replies, and RM-1 child-likeness / RM-2 coherence when those models are given.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chatml import caregiver_chat, render_chat
from ..generate import generate
from .minimal_pairs import json_items
from .words import SPEAKER_TAG, read_aoa, read_cdi_words, utterances, words

FORMATS = ("chat", "dialogue")
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


# --- sampling --------------------------------------------------------------------------------------

def _first_id(value) -> int | None:
    return value[0] if isinstance(value, list) else value


def render_prompt(tokenizer, prompt: str, fmt: str, bos_id: int | None) -> list[int]:
    """Token ids that ask the model for the child's reply to `prompt`."""
    if fmt == "chat":
        return render_chat(tokenizer, caregiver_chat(prompt), add_generation_prompt=True).ids
    if fmt == "dialogue":
        ids = tokenizer.encode(f"*MOT: {prompt}\n*CHI:", add_special_tokens=False).ids
        return ([bos_id] if bos_id is not None else []) + list(ids)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def stop_ids(tokenizer, fmt: str, eos_ids) -> list[int]:
    """Tokens that end a reply: EOS, and <|im_end|> (chat) or any token holding a line break (dialogue)."""
    stops = [i for i in (eos_ids if isinstance(eos_ids, list) else [eos_ids]) if i is not None]
    if fmt == "chat":
        im_end = tokenizer.token_to_id("<|im_end|>")
        if im_end is None:
            raise ValueError("the tokenizer has no <|im_end|> token; use --format dialogue, or give the model "
                             "ChatML tokens (minitoddler.chatml.add_chat_tokens)")
        stops.append(im_end)
    else:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        stops += [i for i in range(size) if "\n" in tokenizer.decode([i], skip_special_tokens=False)]
    return sorted(set(stops))


def clean_reply(tokenizer, ids: list[int]) -> str:
    """Decoded reply: special tokens dropped, cut at the first line break, no leading speaker tag."""
    text = tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0]
    return SPEAKER_TAG.sub("", text).strip()


def sample_replies(model, tokenizer, prompts: list[str], fmt: str = "chat", max_new_tokens: int = 48,
                   temperature: float = 0.7, top_p: float | None = 0.9, top_k: int | None = None,
                   seed: int = 0, batch_size: int = 32) -> list[str]:
    """One sampled reply per prompt (temperature 0 = greedy), in batches of `batch_size` prompts."""
    bos = _first_id(model.cfg.bos_token_id)
    stops = stop_ids(tokenizer, fmt, model.cfg.eos_token_id)
    replies = []
    for start in range(0, len(prompts), batch_size):
        batch = [render_prompt(tokenizer, p, fmt, bos) for p in prompts[start:start + batch_size]]
        out = generate(model, batch, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_ids=stops, seed=seed + start)
        replies += [clean_reply(tokenizer, ids) for ids in out]
    return replies


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
    n_utts = sum(len(u) for u in per_reply)
    m = {
        "n_replies": len(replies),
        "empty_share": sum(not u for u in per_reply) / len(replies),
        "words_per_reply": len(tokens) / len(replies),
        "mlu_words": sum(len(s) for u in per_reply for s in u) / n_utts if n_utts else 0.0,
        "single_sentence_share": sum(len(u) == 1 for u in per_reply) / len(replies),
        "type_token_ratio": len(set(tokens)) / len(tokens) if tokens else 0.0,
    }
    if aoa is not None:
        rated = [aoa[w] for w in tokens if w in aoa]
        m["mean_aoa_years"] = sum(rated) / len(rated) if rated else None
        m["aoa_coverage"] = len(rated) / len(tokens) if tokens else 0.0
    if cdi is not None:
        m["cdi_word_share"] = sum(w in cdi for w in tokens) / len(tokens) if tokens else 0.0
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


@torch.no_grad()
def evaluate_generation(model, tokenizer, prompts: list[Prompt], fmt: str = "chat", samples: int = 1,
                        max_new_tokens: int = 48, temperature: float = 0.7, top_p: float | None = 0.9,
                        top_k: int | None = None, seed: int = 0, aoa_path=None, cdi_path=None, rm1=None,
                        rm2=None, similarity_model=None, n_examples: int = 10,
                        device: str = "cpu") -> tuple[dict, list[dict]]:
    """Sample `samples` replies per prompt and measure them; returns (results, one row per reply)."""
    aoa = read_aoa(aoa_path) if aoa_path else None
    cdi = read_cdi_words(cdi_path) if cdi_path else None
    asked = [p for p in prompts for _ in range(samples)]
    replies = []
    for k in range(samples):
        replies.append(sample_replies(model, tokenizer, [p.text for p in prompts], fmt, max_new_tokens,
                                      temperature, top_p, top_k, seed=seed + 1_000_003 * k))
    replies = [replies[k][i] for i in range(len(prompts)) for k in range(samples)]
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
    rows = [{"prompt": p.text, "reply": r, "gold": p.gold} for p, r in zip(asked, replies)]
    results["examples"] = rows[:n_examples]
    return results, rows
