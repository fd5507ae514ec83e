"""Turn a CHAT main tier into plain lower-case text for language-model training.

One function, `clean_utterance`, applies every rule below; each rule has a unit test in tests/test_clean.py.
`normalize_benchmark_text` applies them to benchmark sentences written CHAT-spaced ("*CHI: I am blue .").

    rule                                   CHAT                                 text
    retracing keeps the correction         <a b> [//] c      the dog [/] dog     c / the dog
    replacement: the spoken form or        goed [: went]     dunno [: don't know]
      the target (forms="spoken"|"target")                     goed / went       dunno / don't know
    exclusion [e] drops the scoped words   is [e] child                          child
    events, fragments, babbling dropped    &=laughs &+fr &~baba &*MOT:yeah       (nothing)
    fillers dropped (or kept as words)     &-uh apple                            apple / uh apple
    unintelligible / untranscribed         xxx yyy www                           (nothing)
    omitted words                          0word 0v                              (nothing)
    annotations, postcodes, precodes       [= x] [* m] [?] [!] [x 3] [+ IMP] [- spa] [^ x]   (nothing)
    comments, also older inline tiers      [% x] [%act: sighs] [%com: softly]   (nothing)
    overlap and CA markers                 ⌈ ⌉ ⌊ ⌋ < > [>] [<] ° ↑ ∆ …          (nothing)
    pauses, media bullets                  (.) (..) (2.5) \\x15 0_500 \\x15       (nothing)
    older pauses                           #  ##  ###  #2.5                     (nothing)
    shortenings                            (be)cause goin(g)                     because going
    special form markers                   word@c hao3@s:zho b@l                 word hao3 b
    compounds                              ice+cream how_about                   ice cream / how about
    prosody inside words                   no:: o^kay ˈhello                     no okay hello
    word-initial ^ (older prosodic mark)   ^ever(y)body tape ^recorder           everybody tape recorder
    terminators                            +... +/. +//. +? +!? +"/. +..?        ... . . ? ? . ?
    linkers                                +" +, ++ +< +^                        (nothing)
    separators, clause separator ;         ‡ „ ; (also glued: sheep;)            ,
    spacing and case                       Here you go .                         here you go.

Markup that cannot be read safely raises `MarkupError` instead of guessing words: unclosed or unknown
brackets, unmatched `<` `>`, a nested `<...>` group without its annotation, an unclosed `(`,
`word@` without a form type, a terminator inside an event (`&=laughs!`), malformed long features
(`&{laughing}`), stray control characters, or leftover symbols such as `$$`. Its `reason` is a fixed
phrase (for counting), its `token` the unknown annotation when that is the problem (so a reader can drop
just the annotation). The reader (minitoddler/data/chat.py) decides what a problem costs.
"""
import re


FORMS = ("spoken", "target")


class MarkupError(ValueError):
    """A main tier whose markup cannot be turned into words safely; the message starts with `reason`."""

    def __init__(self, reason: str, detail: str = "", token: str = ""):
        super().__init__(reason + detail)
        self.reason, self.token = reason, token


# Removed before tokenizing: media bullets, underline marks, pauses, CA segment repetitions.
_BULLET = re.compile("\x15[^\x15]*\x15")
_UNDERLINE = re.compile("\x02[\x01\x02]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_PAUSE = re.compile(r"\((?:\.{1,3}|(?:\d+:)?\d+\.\d*)\)")
_SEGMENT_REPETITION = re.compile("↫[^↫\\s]*↫")
_OVERLAP = re.compile(r"[⌈⌉⌊⌋]\d*")
# CA prosody and voice-quality marks, intonation arrows, quotation marks, sign/phonological group brackets.
_DELETE = str.maketrans("", "", "°↑↓∆∇⁎▁▔☺♋⁇∬Ϋ∮≠∙∾↻⤇⤆⁑Ἡ⇗↗→↘⇘∞≈≋≡“”‹›〔〕ˈˌ")

# Tokens: a bracketed annotation, a group bracket, a separator, or a run of other non-space characters.
# A lone "[" or "]" falls through to the last alternative and is reported.
_TOKEN = re.compile(r"\[[^\[\]]*\]|\+<|[<>‡„,;]|[^\s<>\[\]‡„,;]+|\S")

_RETRACE = re.compile(r"\[(?:/{1,3}|/-|/\?|e)\]")
_REPLACEMENT = re.compile(r"\[::? (.+)\]")
_IGNORED = re.compile(
    r"\[(?:\?|!{1,2}|[<>]\d*|x \d+|\*(?: [^\]]*)?|(?:=[!?]?|%|\+|-|\^|#) [^\]]+|\^c|%[a-z]+: ?[^\]]*)\]"
)  # the last alternative: a dependent tier written inline, an older convention ([%act: sighs deeply])
_OLD_PAUSE = re.compile(r"#+(?:\d[\d:._]*)?")  # older CHAT's pauses: # ## ### #2.5

_UNTRANSCRIBED = {"xxx", "yyy", "www", "xx", "yy"}
# Old-style fillers written without the dash (&uh); kept only with keep_fillers=True.
_OLD_FILLERS = {"uh", "um", "er", "erm", "ah", "eh", "hmm", "hm", "mm", "uhm", "mhm", "oh"}
_LONG_FEATURE = re.compile(r"&[{}][ln]=\S+")
_GLUED_TERMINATOR = re.compile(r"^(.*?[^.!?])([.!?]+)$")
_SHORTENING = re.compile(r"[^()]*(?:\([^()]*\)[^()]*)*")
_WORD = re.compile(r"[\w\u0300-\u036f'’-]*\w[\w\u0300-\u036f'’-]*")
_IN_WORD_MARKS = str.maketrans("", "", ":^~()#")  # lengthening, pause, clitic, shortening, prefix

# Fast path: plain words and an optional final terminator need no markup handling.
_PLAIN_WORD = r"'*[A-Za-z][A-Za-z']*"
_PLAIN = re.compile(rf"{_PLAIN_WORD}(?: {_PLAIN_WORD})*(?: [.?!])?")
_UNTRANSCRIBED_WORD = re.compile(r"\b(?:xxx|yyy|www|xx|yy)\b", re.I)
_COMPOUND = re.compile(r"[_+]")

_SPEAKER = re.compile(r"(\*[A-Z0-9][A-Z0-9_'+-]*:)\s*(.*)", re.S)
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[.,;?!])")
_EXTRA_COMMAS = re.compile(r"(?:, *)+(?=[,.?!]|$)")


def clean_utterance(raw: str, keep_fillers: bool = False, forms: str = "spoken") -> str:
    """Cleaned, lower-case text of one CHAT main tier ("" when nothing speakable is left).

    forms: "spoken" keeps what was said before a replacement (`goed [: went]` -> goed), "target" takes
    the replacement (went). Raises MarkupError (with the offending piece in the message) for markup it
    cannot read safely.
    """
    if forms not in FORMS:
        raise ValueError(f"forms must be one of {FORMS}, not {forms!r}")
    if _PLAIN.fullmatch(raw) and not _UNTRANSCRIBED_WORD.search(raw):
        return _SPACE_BEFORE_PUNCT.sub("", raw).lower()
    text = _prepare(raw)
    items: list[list[list[str]]] = [[]]  # a stack of groups; each holds items, each item a word list
    annotation_due = False  # a nested <...> group just closed: its annotation must follow
    for token in _TOKEN.findall(text):
        if annotation_due and not token.startswith("["):
            raise MarkupError("nested <...> group without an annotation", f" before {token!r}")
        annotation_due = False
        if token.startswith("["):
            _annotate(items[-1], token, keep_fillers, forms)
        elif token == "<":
            items.append([])
        elif token == ">":
            if len(items) == 1:
                raise MarkupError("'>' without a matching '<'")
            group = items.pop()
            items[-1].append([word for item in group for word in item])
            annotation_due = len(items) > 1
        else:
            items[-1].append(_clean_token(token, keep_fillers))
    if len(items) > 1:
        raise MarkupError("'<' without a matching '>'")
    return _join([word for item in items[0] for word in item])


def normalize_benchmark_text(text: str) -> str:
    """A benchmark sentence written CHAT-spaced ("*CHI: I am blue .", "Blue .") in the cleaned training format
    ("*CHI: i am blue.", "blue."): the same rules as the training text; a "*SPK:" prefix stays, as in triplets.

    A token whose markup cannot be read is left out rather than failing the sentence: every item gets scored.
    """
    m = _SPEAKER.fullmatch(text.strip())
    speaker, body = (m.group(1) + " ", m.group(2)) if m else ("", text.strip())
    try:
        return speaker + clean_utterance(body)
    except MarkupError:
        return speaker + clean_utterance(" ".join(t for t in body.split() if _readable(t)))


def _readable(token: str) -> bool:
    try:
        clean_utterance(token)
        return True
    except MarkupError:
        return False


def _prepare(raw: str) -> str:
    text = _UNDERLINE.sub("", _BULLET.sub(" ", raw))
    bad = _CONTROL.search(text.replace("\t", " "))
    if bad:
        raise MarkupError("control character", f" {bad.group()!r} in the main tier")
    text = _PAUSE.sub(" ", text)
    text = _SEGMENT_REPETITION.sub("", text)
    return _OVERLAP.sub("", text).translate(_DELETE)


def _annotate(items: list[list[str]], token: str, keep_fillers: bool, forms: str) -> None:
    """Apply a bracketed annotation to the item before it (retrace, replace, or nothing)."""
    if token in ("[", "]"):
        raise MarkupError(f"unmatched '{token}'")
    if _IGNORED.fullmatch(token):
        return
    retrace, replacement = _RETRACE.fullmatch(token), _REPLACEMENT.fullmatch(token)
    if not (retrace or replacement):
        raise MarkupError("unknown annotation", f" {token!r}", token)
    if not items:
        raise MarkupError("annotation with no word before it", f": {token}")
    if retrace:
        items.pop()
    elif forms == "target":
        items[-1] = [w for part in replacement.group(1).split() for w in _clean_token(part, keep_fillers)]


def _clean_token(token: str, keep_fillers: bool) -> list[str]:
    """Words (and punctuation) that one whitespace-separated token stands for."""
    if token in ("‡", "„", ",", ";"):
        return [","]
    if token in (".", "?", "!", "...", ":"):
        return [] if token == ":" else [token]
    if token.startswith("+"):
        return _terminator(token)
    if token.startswith("&"):
        return _ampersand(token, keep_fillers)
    glued = _GLUED_TERMINATOR.match(token)
    if glued:  # "hello." (missing space before the terminator)
        return _clean_token(glued.group(1), keep_fillers) + [glued.group(2)[-1]]
    if token.startswith("0") or _OLD_PAUSE.fullmatch(token):
        return []
    word, at, form = token.partition("@")
    if at and not re.match(r"[a-z]", form):
        raise MarkupError("missing form type after '@'", f" in {token!r} (write a form type such as @c or @s:spa)")
    if not _SHORTENING.fullmatch(word):
        raise MarkupError("unclosed '(' or stray ')'", f" in {token!r}")
    words = [part for part in _COMPOUND.split(word.translate(_IN_WORD_MARKS)) if part]
    for part in words or [word]:
        if not _WORD.fullmatch(part):
            raise MarkupError("unexpected characters", f" in {token!r}")
    return [part for part in words if part.lower() not in _UNTRANSCRIBED]


def _terminator(token: str) -> list[str]:
    """+... -> ..., +/. +//. +". +"/. -> ., +? +/? +..? +!? -> ?, linkers (+" +, ++ +< +^) -> nothing."""
    if "?" in token:
        return ["?"]
    if "!" in token:
        return ["!"]
    if token == "+...":
        return ["..."]
    if "." in token:
        return ["."]
    if re.fullmatch(r'\+[",<^+]?', token):
        return []
    raise MarkupError("unknown terminator or linker", f" {token!r}")


def _ampersand(token: str, keep_fillers: bool) -> list[str]:
    """&=event, &+fragment, &~babbling, &*SPK:word and long features are dropped; &-uh is a filler."""
    if token.startswith("&="):
        if re.search(r"[.!?]$", token):
            raise MarkupError("terminator inside an event", f": {token!r} needs a space before the terminator")
        return []
    if token.startswith("&{") or token.startswith("&}"):
        if not _LONG_FEATURE.fullmatch(token) and not re.fullmatch(r"&\{[ln]=\S+\}", token):
            raise MarkupError("malformed long feature", f" {token!r} (expected &{{l=LABEL ... &}}l=LABEL)")
        return []
    glued = _GLUED_TERMINATOR.match(token)
    terminator = [glued.group(2)[-1]] if glued else []
    body = glued.group(1) if glued else token
    if keep_fillers and body.startswith("&-"):
        return _clean_token(body[2:], keep_fillers) + terminator
    if keep_fillers and body[1:].replace(":", "").lower() in _OLD_FILLERS:
        return [body[1:].replace(":", "")] + terminator
    return terminator


def _join(words: list[str]) -> str:
    if not any(_WORD.fullmatch(w) for w in words):
        return ""
    text = _SPACE_BEFORE_PUNCT.sub("", " ".join(words))
    return _EXTRA_COMMAS.sub("", text).lstrip(",.?! ").lower()
