"""The toddler report card: how a set of replies to caregiver lines compares with what real children said
to the same lines.

RL on a child-likeness reward can raise the reward while the replies collapse onto a few templates ("*X*
down.") or parrot the caregiver; averages of single replies (words per reply, RM-1) do not show that, so the
card adds measures over the whole set of replies. Every number is computed the same way for the model's
replies and for the children's, so the children's card is the target:

- words per reply; MLU in words (mean words per sentence, sentences split at . ! ?): the project has no
  morpheme counter (the CHAT reader skips %mor), so this is MLU-w, not Brown's MLU in morphemes
- type/token ratio, distinct-1 and distinct-2 (distinct n-grams / all n-grams, n-grams inside each reply)
- template share: the share of replies that are one of the five most frequent replies
- echo rate: the share of reply words that repeat a word of the caregiver line answered
- mean age of acquisition (Kuperman norms, years) and CDI share of the words used; the unrated share,
  reply words the norms (~31k English words) do not rate: RL on RM-1 can drift to fragments ("ces talk.")
- empty or unfinished share: replies with no word, or not ending in . ! ? (cut off by the token limit)

Words are `words.words` (lower-case letters with inner apostrophes). The set measures (type/token ratio,
distinct-n, template share) depend on how many replies there are: compare cards of equal size.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .words import utterances, words

TOP_REPLIES = 5
TERMINATORS = (".", "!", "?")  # CHAT's utterance terminators (+... and +/. end in "." too)


def words_per_reply(replies: list[str]) -> float:
    """Mean number of words in a reply (empty replies count as 0)."""
    return sum(len(words(r)) for r in replies) / len(replies) if replies else 0.0


def mlu_words(replies: list[str]) -> float:
    """Mean length of utterance in words: words per sentence, a reply split into sentences at . ! ?."""
    lengths = [len(s) for r in replies for s in utterances(r)]
    return sum(lengths) / len(lengths) if lengths else 0.0


def type_token_ratio(replies: list[str]) -> float:
    """Distinct words / words, over all replies together."""
    tokens = [w for r in replies for w in words(r)]
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def distinct_n(replies: list[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / n-grams, over all replies; an n-gram never spans two
    replies. Low when the replies reuse each other's words and phrases."""
    grams = [tuple(w[i:i + n]) for w in map(words, replies) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def template_share(replies: list[str], top: int = TOP_REPLIES) -> float:
    """Share of the replies that are one of the `top` most frequent replies, a reply taken as its words (case
    and punctuation ignored; the empty reply is one more form). 1.0 for `top` replies or fewer; high when
    the model answers many lines with the same few replies."""
    forms = Counter(" ".join(words(r)) for r in replies)
    return sum(count for _, count in forms.most_common(top)) / len(replies) if replies else 0.0


def echo_rate(prompts: list[str], replies: list[str]) -> float:
    """Share of the reply words (all replies together) that are also a word of the caregiver line they answer:
    children repeat some of it; a model that parrots the line scores high."""
    echoed = total = 0
    for prompt, reply in zip(prompts, replies, strict=True):
        said = set(words(prompt))
        reply_words = words(reply)
        echoed += sum(w in said for w in reply_words)
        total += len(reply_words)
    return echoed / total if total else 0.0


def unfinished(reply: str) -> bool:
    """A reply with words that does not end in . ! ? (every transcribed child utterance does): the model ran
    out of tokens, or stopped mid-sentence."""
    return bool(words(reply)) and not reply.rstrip().endswith(TERMINATORS)


def empty_or_unfinished_share(replies: list[str]) -> float:
    """Share of the replies that have no word or are unfinished."""
    return sum(not words(r) or unfinished(r) for r in replies) / len(replies) if replies else 0.0


def mean_aoa(replies: list[str], aoa: dict[str, float]) -> float | None:
    """Mean age of acquisition (years) of the reply words that the norms rate (a word counts each time it is
    used); None when none is rated."""
    rated = [aoa[w] for r in replies for w in words(r) if w in aoa]
    return sum(rated) / len(rated) if rated else None


def unrated_share(replies: list[str], aoa: dict[str, float]) -> float:
    """Share of the reply words (each use counts) that the AoA norms do not rate: rare words, child forms
    and word fragments that are not English words."""
    tokens = [w for r in replies for w in words(r)]
    return sum(w not in aoa for w in tokens) / len(tokens) if tokens else 0.0


def cdi_share(replies: list[str], cdi: set[str]) -> float:
    """Share of the reply words that are on the CDI word list (each use counts)."""
    tokens = [w for r in replies for w in words(r)]
    return sum(w in cdi for w in tokens) / len(tokens) if tokens else 0.0


def report_card(prompts: list[str], replies: list[str], aoa: dict[str, float] | None = None,
                cdi: set[str] | None = None) -> dict:
    """The card of one set of replies, one reply per caregiver line in `prompts` (AoA / CDI when given)."""
    card = {"n_replies": len(replies), "words_per_reply": words_per_reply(replies), "mlu_words": mlu_words(replies),
            "type_token_ratio": type_token_ratio(replies), "distinct_1": distinct_n(replies, 1),
            "distinct_2": distinct_n(replies, 2), "template_share": template_share(replies),
            "echo_rate": echo_rate(prompts, replies)}
    if aoa is not None:
        card["mean_aoa_years"] = mean_aoa(replies, aoa)
        card["unrated_word_share"] = unrated_share(replies, aoa)
    if cdi is not None:
        card["cdi_word_share"] = cdi_share(replies, cdi)
    card["empty_or_unfinished_share"] = empty_or_unfinished_share(replies)
    return card


def mean_card(cards: list[dict]) -> dict:
    """Key by key mean of cards of equal size (one per sampling round), None where no card has a number; a
    number every card shares is kept as it is (n_replies stays an integer)."""
    out = {}
    for key in cards[0]:
        values = [c[key] for c in cards if c.get(key) is not None]
        out[key] = (values[0] if len(set(values)) == 1 else sum(values) / len(values)) if values else None
    return out


def side_by_side(model: dict, children: dict | None) -> dict:
    """The flat results.json keys: model/<metric> and children/<metric>."""
    return {**{f"model/{k}": v for k, v in model.items()}, **{f"children/{k}": v for k, v in (children or {}).items()}}


def length_histogram(path: str | Path, model_replies: list[str],
                     children_replies: list[str]) -> tuple[Path | None, str | None]:
    """A PNG of the reply lengths in words (share of replies, model beside children) when matplotlib is
    installed: (path, None); otherwise (None, a one-line note). matplotlib is optional, never required."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "reply-length histogram skipped: matplotlib is not installed (`pip install matplotlib`)"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sets = [("model", model_replies), ("children", children_replies)]
    sets = [(name, [len(words(r)) for r in replies]) for name, replies in sets if replies]
    top = max(max(lengths) for _, lengths in sets)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(sets)
    for k, (name, lengths) in enumerate(sets):
        counts = Counter(lengths)
        ax.bar([n + (k - (len(sets) - 1) / 2) * width for n in range(top + 1)],
               [counts[n] / len(lengths) for n in range(top + 1)], width=width, label=f"{name} ({len(lengths)})")
    ax.set_xlabel("words per reply")
    ax.set_ylabel("share of replies")
    ax.set_title("reply lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, None
