"""Read CHAT transcripts (.cha, CHILDES/TalkBank) into utterances with speaker, role, age and clean text.

What it reads: headers (@Languages, @Participants, @ID with role and age "Y;MM.DD"), main tiers
"*SPK:\\t..." with tab-indented continuation lines, media bullets, both the older and the 2024 CHAT
formats. Dependent tiers (%mor, %gra, ...) and other headers are skipped. The text of each utterance
is cleaned by `minitoddler.data.clean.clean_utterance`; the main tier as written is kept in `raw`.

What a problem costs, so that one odd line never loses a whole transcript:
  - a file that is structurally broken raises `ChatError` naming "file:line": empty, not UTF-8, no @Begin,
    a line that is neither header, tier nor continuation, a main tier that cannot be delimited ("*CHI hi .");
  - an annotation the cleaner does not know ("[& x]") is dropped, the rest of the utterance is read;
  - other markup that cannot be read safely ("hello <world .") drops that utterance: it stays in
    `utterances` with text "" (so it still ends a turn);
  - a header, @ID or dependent tier of the wrong shape is ignored.
Each of these is a warning "file:line: message" in `Transcript.warnings`, as are problems that cannot change
the words (a speaker missing from @Participants, a trailing comma in @Languages, no @End); each dropped
utterance or annotation is also in `Transcript.dropped`, with a fixed `reason` for counting. strict=True
makes the markup, header, @ID and dependent-tier problems ChatErrors instead, as a validator would.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from minitoddler.data.clean import MarkupError, clean_utterance


class ChatError(ValueError):
    """A file that is not valid CHAT; the message is "file:line: reason detail"."""

    def __init__(self, path, line: int, reason: str, detail: str = ""):
        super().__init__(f"{path}:{line}: {reason}{detail}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass
class Participant:
    code: str  # "MOT"
    role: str  # "Mother", "Target_Child", ...
    name: str = ""
    age: float | None = None  # months
    sex: str = ""
    language: str = ""


@dataclass
class Utterance:
    speaker: str  # "MOT"
    role: str  # "Mother" ("" if the speaker is not declared)
    age: float | None  # age of the target child in months at the recording, None if unknown
    text: str  # cleaned, lower-case words with punctuation ("" if nothing speakable is left)
    raw: str  # the main tier as written (continuation lines joined by spaces)
    line: int  # 1-based line of "*SPK:" in the file


@dataclass
class Dropped:
    """A piece of a readable transcript that the reader left out, and why."""
    line: int
    what: str  # "utterance" or "annotation"
    reason: str  # a fixed phrase such as "unknown annotation" or "unmatched '['"
    raw: str  # the main tier (for an utterance) or the annotation, as written


@dataclass
class Transcript:
    path: str
    participants: dict[str, Participant]
    utterances: list[Utterance]
    languages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # "file:line: message"
    dropped: list[Dropped] = field(default_factory=list)

    @property
    def target_child(self) -> str | None:
        """Speaker code of the target child (role Target_Child, else a speaker coded CHI)."""
        for p in self.participants.values():
            if p.role == "Target_Child":
                return p.code
        return "CHI" if "CHI" in self.participants else None


# The text is searched with a "\n" in front, so every line starts after a "\n" and the patterns below
# begin with a literal that the regex engine finds fast. A line is a header (@), a main tier (*),
# a dependent tier (%), a continuation of the line before (tab or space) or blank.
_BAD_LINE = re.compile(r"\n[^@*%\t \n][^\n]*")
_BAD_DEPENDENT_TIER = re.compile(r"\n%(?![\w-]+:(?:[\t ]|(?![^\n])))[^\n]*")
_BEGIN = re.compile(r"\n@Begin[ \t]*(?![^\n])")
_END = re.compile(r"\n@End[ \t]*(?![^\n])")
_ENTRY = re.compile(r"\n([@*])([^\n]*(?:\n[\t ][^\n]*)*)")
_CONTINUATION = re.compile(r"[\t ]*\n[\t ]+")
_MAIN_TIER = re.compile(r"([A-Z0-9][A-Z0-9_'+-]*):(?:[\t ]+(.*)|$)", re.S)
_HEADER = re.compile(r"([A-Za-z][\w ]*?)(?::[\t ]*(.*))?$", re.S)
_AGE = re.compile(r"(\d+);(\d{1,2})?(?:\.(\d{1,2})?)?$")


def read_chat(path, keep_fillers: bool = False, forms: str = "spoken", strict: bool = False) -> Transcript:
    """Read one .cha file.

    keep_fillers: keep "&-uh" fillers as words. forms: "spoken" keeps the form said before a replacement
    (`goed [: went]` -> goed), "target" takes the replacement (went). strict: raise ChatError for markup,
    @ID and dependent-tier problems too, instead of dropping the annotation or utterance with a warning.
    """
    path = Path(path)
    text = "\n" + _decode(path, path.read_bytes())
    if not text.strip():
        raise ChatError(path, 1, "file is empty", "; a CHAT file starts with @Begin")
    bad = _BAD_LINE.search(text)
    if bad:
        raise ChatError(path, _line_of(text, bad.start()), "unknown kind of line", ": not a header (@), tier "
                        f"(*SPK: or %tier:) or tab-indented continuation: {bad.group()[1:41]!r}")
    begin = _BEGIN.search(text)
    if not begin:
        raise ChatError(path, 1, "missing @Begin line", "; not a CHAT file")
    transcript = Transcript(str(path), {}, [])
    for bad in _BAD_DEPENDENT_TIER.finditer(text):
        _problem(transcript, strict, _line_of(text, bad.start()), "dependent tier must look like '%name:<tab>text'",
                 f": {bad.group()[1:41]!r}")
    if not _END.search(text):
        last_line = text.rstrip().count("\n")
        transcript.warnings.append(f"{path}:{last_line}: missing @End (truncated file?)")

    tiers = []  # (line, speaker, raw)
    line, pos = 0, 0
    for m in _ENTRY.finditer(text):
        line += text.count("\n", pos, m.start() + 1)
        pos = m.start() + 1
        kind, body = m.group(1), _CONTINUATION.sub(" ", m.group(2))
        if kind == "@":
            _read_header(transcript, strict, line, body)
        else:
            tier = _MAIN_TIER.fullmatch(body)
            if not tier:
                raise ChatError(path, line, "malformed main tier", ": must look like '*SPK:<tab>text' (speaker "
                                f"code in capitals): {('*' + body)[:40]!r}")
            if m.start() < begin.start():
                raise ChatError(path, line, "main tier before @Begin")
            tiers.append((line, tier.group(1), (tier.group(2) or "").strip()))

    child = transcript.target_child
    child_age = transcript.participants[child].age if child else None
    for line, speaker, raw in tiers:
        participant = transcript.participants.get(speaker)
        if participant is None:
            transcript.warnings.append(f"{path}:{line}: speaker {speaker} is not in @Participants")
        role = participant.role if participant else ""
        cleaned = _clean(transcript, strict, line, raw, keep_fillers, forms)
        transcript.utterances.append(Utterance(speaker, role, child_age, cleaned, raw, line))
    return transcript


def _clean(transcript: Transcript, strict: bool, line: int, raw: str, keep_fillers: bool, forms: str) -> str:
    """clean_utterance, where an unknown annotation costs only itself and other bad markup the utterance."""
    text = raw
    while True:
        try:
            return clean_utterance(text, keep_fillers=keep_fillers, forms=forms)
        except MarkupError as e:
            if strict:
                raise ChatError(transcript.path, line, e.reason, str(e)[len(e.reason):]) from None
            if e.token and e.token in text:  # each pass removes one annotation, so the loop ends
                text = text.replace(e.token, " ", 1)
                transcript.dropped.append(Dropped(line, "annotation", e.reason, e.token))
                transcript.warnings.append(f"{transcript.path}:{line}: annotation dropped: {e}")
                continue
            transcript.dropped.append(Dropped(line, "utterance", e.reason, raw))
            transcript.warnings.append(f"{transcript.path}:{line}: utterance dropped: {e}")
            return ""


def _problem(transcript: Transcript, strict: bool, line: int, reason: str, detail: str = "") -> None:
    """A ChatError when strict, else a warning: the caller leaves the piece out."""
    if strict:
        raise ChatError(transcript.path, line, reason, detail)
    transcript.warnings.append(f"{transcript.path}:{line}: {reason}{detail} (ignored)")


def parse_age(value: str) -> float | None:
    """CHAT age "Y;MM.DD" (months and days optional) in months; None when empty or unreadable."""
    m = _AGE.match(value.strip())
    if not m:
        return None
    years, months, days = (int(g) if g else 0 for g in m.groups())
    return years * 12 + months + days / 30


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise ChatError(path, data.count(b"\n", 0, e.start) + 1,
                        "not UTF-8 text", " (CHAT files are UTF-8; re-save the file as UTF-8)") from None


def _line_of(text: str, index: int) -> int:
    """1-based line of the line that starts after the "\n" at index (text has a "\n" in front)."""
    return text.count("\n", 0, index + 1)


def _read_header(transcript: Transcript, strict: bool, line: int, body: str) -> None:
    m = _HEADER.match(body)
    if not m:
        _problem(transcript, strict, line, "header must look like '@Name:<tab>value'", f": {('@' + body)[:40]!r}")
        return
    name, value = m.group(1), (m.group(2) or "").strip()
    path = transcript.path
    if name == "Languages":
        codes = [c.strip() for c in value.split(",")]
        if "" in codes:
            transcript.warnings.append(f"{path}:{line}: empty language code in @Languages: {value!r}")
        transcript.languages = [c for c in codes if c]
    elif name == "Participants":
        for entry in filter(None, (e.strip() for e in value.split(","))):
            code, *rest = entry.split()
            if not rest:
                transcript.warnings.append(f"{path}:{line}: participant {code} has no role in @Participants")
            transcript.participants[code] = Participant(code, rest[-1] if rest else "", " ".join(rest[:-1]))
    elif name == "ID":
        fields = [f.strip() for f in value.split("|")]
        if len(fields) < 8 or not fields[2]:
            _problem(transcript, strict, line, "@ID needs 10 fields 'lang|corpus|code|age|sex|group|SES|role|"
                     "education|custom|'", f": {value!r}")
            return
        p = transcript.participants.setdefault(fields[2], Participant(fields[2], fields[7]))
        p.role = fields[7] or p.role
        p.age, p.sex, p.language = parse_age(fields[3]), fields[4], fields[0]
