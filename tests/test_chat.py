"""The CHAT reader on hand-written files and on all of the team's real CHAT data (../shared/data)."""
import re
import warnings

import pylangacq  # a required test dependency: the independent reader our counts are checked against
import pytest

from minitoddler.data.chat import ChatError, Dropped, parse_age, read_chat

SMALL = """\
@UTF8
@Begin
@Languages:\teng
@Participants:\tCHI Lily Target_Child, MOT Mother ,
\tFAT Father
@ID:\teng|test|CHI|2;06.15|female|||Target_Child|||
@ID:\teng|test|MOT|||||Mother|||
@ID:\teng|test|FAT|||||Father|||
@Comment:\ta comment that goes on
\tover two lines
*MOT:\tlook at the big red ball that is rolling under the sofa and
\tthe chair .
%mor:\tv|look prep|at det|the adj|big adj|red n|ball .
%gra:\t1|0|ROOT
*CHI:\tball ! \x151000_2000\x15
@New Episode
*FAT:\txxx .
*CHI:\t<I want> [//] I get it .
%com:\tCHI crawls under the sofa
@End
"""


def write(tmp_path, text, name="t.cha"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_headers_tiers_continuations_and_lines(tmp_path):
    t = read_chat(write(tmp_path, SMALL))
    assert t.languages == ["eng"]
    assert {c: (p.role, p.name) for c, p in t.participants.items()} == {
        "CHI": ("Target_Child", "Lily"), "MOT": ("Mother", ""), "FAT": ("Father", "")}
    assert t.participants["CHI"].age == 2 * 12 + 6 + 15 / 30
    assert t.target_child == "CHI"
    assert [(u.speaker, u.role, u.line) for u in t.utterances] == [
        ("MOT", "Mother", 11), ("CHI", "Target_Child", 15), ("FAT", "Father", 17), ("CHI", "Target_Child", 18)]
    mot, chi, fat, chi2 = t.utterances
    # the continuation line is part of the utterance, not truncated
    assert mot.text == "look at the big red ball that is rolling under the sofa and the chair."
    assert mot.raw == "look at the big red ball that is rolling under the sofa and the chair ."
    assert chi.text == "ball!" and chi.age == pytest.approx(30.5)
    assert fat.text == ""  # kept with empty text: prepare counts and drops it
    assert chi2.text == "i get it." and chi2.raw == "<I want> [//] I get it ."
    assert t.warnings == []


@pytest.mark.parametrize("value,months", [
    ("2;06.15", 30.5), ("1;6.", 18.0), ("1;06.00", 18.0), ("3;00.", 36.0), ("2;", 24.0),
    ("1;02.29", 14 + 29 / 30), ("43;", 516.0), ("", None), ("unknown", None)])
def test_parse_age(value, months):
    assert parse_age(value) == months


def test_errors_name_file_and_line(tmp_path):
    bad = SMALL.replace("*CHI:\tball !", "*CHI:\tball [: bat .")
    with pytest.raises(ChatError, match=re.escape(f"{tmp_path / 't.cha'}:15: unmatched '['")):
        read_chat(write(tmp_path, bad), strict=True)
    with pytest.raises(ChatError, match=re.escape(f"{tmp_path / 't.cha'}:17: malformed main tier: must look like")) as e:
        read_chat(write(tmp_path, SMALL.replace("*FAT:\txxx .", "*FAT xxx .")))  # cannot be delimited
    assert (e.value.reason, e.value.line) == ("malformed main tier", 17)
    latin1 = SMALL.encode().replace(b"Lily", "Zoë".encode("latin-1"))
    path = tmp_path / "latin1.cha"
    path.write_bytes(latin1)
    with pytest.raises(ChatError, match=r"latin1.cha:4: not UTF-8"):
        read_chat(path)
    with pytest.raises(ChatError, match=r":1: missing @Begin"):
        read_chat(write(tmp_path, SMALL.replace("@Begin\n", "")))


def test_bad_markup_costs_only_that_utterance_with_a_warning(tmp_path):
    bad = SMALL.replace("*CHI:\tball !", "*CHI:\tball [: bat .")
    path = write(tmp_path, bad)
    t = read_chat(path)
    # the utterance stays, empty, so that it still ends a turn; the others are read as usual
    assert [(u.line, u.text) for u in t.utterances] == [
        (11, "look at the big red ball that is rolling under the sofa and the chair."), (15, ""), (17, ""),
        (18, "i get it.")]
    assert t.warnings == [f"{path}:15: utterance dropped: unmatched '['"]
    assert t.dropped == [Dropped(15, "utterance", "unmatched '['", "ball [: bat . \x151000_2000\x15")]


def test_unknown_annotation_costs_only_itself(tmp_path):
    path = write(tmp_path, SMALL.replace("*CHI:\tball !", "*CHI:\tbig [& foo] ball [$ bar] !"))
    t = read_chat(path)
    assert t.utterances[1].text == "big ball!"
    assert t.dropped == [Dropped(15, "annotation", "unknown annotation", "[& foo]"),
                         Dropped(15, "annotation", "unknown annotation", "[$ bar]")]
    assert t.warnings == [f"{path}:15: annotation dropped: unknown annotation '[& foo]'",
                          f"{path}:15: annotation dropped: unknown annotation '[$ bar]'"]
    with pytest.raises(ChatError, match=":15: unknown annotation '\\[& foo\\]'"):
        read_chat(path, strict=True)


def test_bad_id_and_dependent_tier_are_ignored_with_a_warning(tmp_path):
    text = SMALL.replace("@ID:\teng|test|FAT|||||Father|||", "@ID:\teng|test").replace("%gra:\t", "%gra ")
    path = write(tmp_path, text)
    t = read_chat(path)
    assert [u.text for u in t.utterances][1:3] == ["ball!", ""]
    assert t.participants["FAT"].role == "Father"  # from @Participants
    assert len(t.warnings) == 2 and f"{path}:8: @ID needs 10 fields" in t.warnings[1]
    assert t.warnings[0].startswith(f"{path}:14: dependent tier must look like")
    assert t.warnings[1].endswith("(ignored)")
    with pytest.raises(ChatError, match=":14: dependent tier must look like '%name:<tab>text': '%gra 1|0|ROOT'$"):
        read_chat(path, strict=True)
    with pytest.raises(ChatError, match=":8: @ID needs 10 fields"):
        read_chat(write(tmp_path, text.replace("%gra ", "%gra:\t")), strict=True)


# The lines that made the reader skip 129 real CHILDES transcripts (issue 13), and their older siblings.
OLDER_FORMS = """\
*CHI:\t0 [%act: sighs deeply] .
*CHI:\ta goat [%act: it's a cow] .
*MOT:\tthat's not a sheep; it's a bear .
*MOT:\t<the lunch at one; the xxx at five> [<] .
*FAT:\t^ever(y)body hold (h)im down .
*CHI:\ttape ^recorder ?
*MOT:\tput it # there ## now .
*MOT:\tyes [%com: she nods] .
"""
OLDER_TEXTS = ["", "a goat.", "that's not a sheep, it's a bear.", "the lunch at one, the at five.",
               "everybody hold him down.", "tape recorder?", "put it there now.", "yes."]


def test_older_forms_are_read_like_pylangacq_reads_them(tmp_path):
    path = write(tmp_path, SMALL.replace("@End\n", OLDER_FORMS + "@End\n"))
    for strict in (False, True):
        t = read_chat(path, strict=strict)
        assert [u.text for u in t.utterances[4:]] == OLDER_TEXTS
        assert t.warnings == [] and t.dropped == []
    reader = pylangacq.CHAT.from_files([str(path)], mor_tier=None, gra_tier=None, strict=False)
    theirs = [u for u in reader.utterances() if u.participant][4:]
    # pylangacq knows [%act: ...] but reads "[%com: she nods]" as the words "[%com: she nods": leave it out
    assert [len(re.findall(r"[\w'’-]+", text)) for text in OLDER_TEXTS[:-1]] == \
        [_pylangacq_word_count(u) for u in theirs[:-1]]


def test_keep_fillers(tmp_path):
    text = SMALL.replace("*FAT:\txxx .", "*FAT:\t&-um okay .")
    assert read_chat(write(tmp_path, text)).utterances[2].text == "okay."
    assert read_chat(write(tmp_path, text), keep_fillers=True).utterances[2].text == "um okay."


@pytest.fixture(scope="module")
def childes(shared_data):
    """All shared CHILDES transcripts, read once for this module: {path: Transcript}. Target forms, as
    pylangacq's tokens take the replacement (`goed [: went]` -> went)."""
    return {str(f): read_chat(f, forms="target", strict=True) for f in sorted((shared_data / "childes").rglob("*.cha"))}


def test_all_shared_childes_transcripts_read(childes):
    assert len(childes) == 114
    n = 0
    for t in childes.values():
        assert t.warnings == [] and t.dropped == [], t.warnings
        assert t.target_child == "CHI" and t.languages == ["eng"]
        n += len(t.utterances)
    assert n == 58008


def test_2024_format_reads_like_the_older_release(shared_data):
    """Eve's first transcript in both CHAT formats: same utterances, nearly all with the same text."""
    old = read_chat(shared_data / "childes/brown-eve/eve01.cha").utterances
    new = read_chat(shared_data / "childes/brown-eve-2024-format.cha").utterances
    assert len(new) == len(old) == 1588
    same = sum(a.text == b.text for a, b in zip(old, new))
    # the rest are re-transcriptions in the 2024 release (wanna vs want to, taperecorder, hafta, ...)
    assert same / len(old) > 0.95, same


def test_ages_and_roles_agree_with_pylangacq(childes):
    files = sorted(childes)[::8]
    reader = pylangacq.CHAT.from_files(files, mor_tier=None, gra_tier=None, strict=False)
    for path, headers in zip(reader.file_paths, reader.headers()):
        theirs = {p.code: (p.role, p.age.in_months() if p.age else None) for p in headers.participants}
        mine = {c: (p.role, p.age) for c, p in childes[path].participants.items()}
        assert mine == theirs, path


def test_every_reference_file_reads(shared_data):
    files = sorted((shared_data / "chat-reference").rglob("*.cha"))
    assert len(files) == 100
    languages, n = {}, 0
    for f in files:
        t = read_chat(f, strict=True)  # no problem at all, not even one that strict mode would raise
        assert t.warnings == [] and t.dropped == [], t.warnings
        n += len(t.utterances)
        languages[f.name] = t.languages
    assert n == 1149
    # non-English files are read; their @Languages lets a corpus run filter them
    assert languages["fra-conversation.cha"] == ["fra"] and languages["eng-conversation.cha"] == ["eng"]
    speakers = {u.text for u in read_chat(shared_data / "chat-reference/content/linkers.cha").utterances}
    assert "and then what." in speakers  # "+< and then what ." : the +< linker is not a word


# Every file of chat-invalid/ and what it costs:
#   ("error", line, message)       structurally broken: the file raises ChatError, strict or not;
#   ("utterance", line, message)   bad markup: that utterance is dropped with a warning (strict: ChatError);
#   ("annotation", line, message)  an unknown annotation: only it is dropped (strict: ChatError);
#   ("warning", line, message)     read as is, with a warning;
#   ("accepted", texts, reason)    read without a warning: the problem cannot change the words.
INVALID = {
    "E003_empty_string.cha": ("error", 1, "file is empty"),
    "E101_invalid_line_format.cha": ("error", 3, "unknown kind of line"),
    "E202_missing_form_type.cha": ("utterance", 8, "missing form type after '@'"),
    "E252_caret_at_word_start.cha": ("accepted", ["test."], "a word-initial ^ is an older prosodic mark: "
                                     "Peters's transcripts have '^ever(y)body', pylangacq reads them"),
    "E302_missing_node.cha": ("error", 7, "malformed main tier"),
    "E309_unexpected_syntax.cha": ("accepted", ["hello world."], "'##' is older CHAT's long pause"),
    "E312_unclosed_bracket.cha": ("utterance", 7, "unmatched '['"),
    "E312_unknown_scoped_marker.cha": ("annotation", 9, "unknown annotation '[& text]'"),
    "E313_unclosed_parenthesis.cha": ("utterance", 7, "unclosed '('"),
    "E314_incomplete_annotation.cha": ("utterance", 7, "unmatched '['"),
    "E315_invalid_control_char.cha": ("utterance", 7, "control character"),
    "E316_invalid_main_tier_syntax.cha": ("utterance", 8, "unmatched '['"),
    "E316_speaker_without_colon.cha": ("error", 8, "malformed main tier"),
    "E320_languages_trailing_comma.cha": ("warning", 3, "empty language code in @Languages"),
    "E323_missing_colon.cha": ("error", 7, "malformed main tier"),
    "E344_invalid_scoped_nesting.cha": ("utterance", 8, "nested <...> group without an annotation"),
    "E345_unmatched_scoped_begin.cha": ("utterance", 8, "'<' without a matching '>'"),
    "E346_unmatched_scoped_end.cha": ("utterance", 8, "'>' without a matching '<'"),
    "E364_terminator_in_event_label_exclaim.cha": ("utterance", 6, "terminator inside an event"),
    "E364_terminator_in_event_label_period.cha": ("utterance", 6, "terminator inside an event"),
    "E364_terminator_in_event_label_question.cha": ("utterance", 6, "terminator inside an event"),
    "E369_nonvocal_label_mismatch.cha": ("utterance", 8, "malformed long feature '&{laughing}'"),
    "W108_speaker_not_in_participants.cha": ("warning", 6, "speaker MOT is not in @Participants"),
    # The reader extracts LM text; these problems cannot change the words.
    "E531_media_filename_mismatch.cha": ("accepted", ["hello."], "@Media is not used"),
    "E552_unlinked_with_wor_timing.cha": ("accepted", ["hello."], "%wor and other dependent tiers are skipped"),
    "E601_invalid_dependent_tier.cha": ("accepted", ["hello."], "%mor is skipped; the main tier 'hello .' is valid"),
    "W210_missing_whitespace_before.cha": ("accepted", ["hello."], "'hello.' is split into 'hello' + '.'"),
    "W211_missing_whitespace_after_overlap.cha": ("accepted", ["hello world."], "overlap marks are removed"),
}


def test_every_invalid_file_is_reported_or_accepted_with_a_reason(shared_data):
    files = sorted((shared_data / "chat-invalid").rglob("*.cha"))
    assert sorted(f.name for f in files) == sorted(INVALID), "a new invalid file needs an expectation here"
    for f in files:
        kind, where, what = INVALID[f.name]
        if kind == "error":
            for strict in (False, True):
                with pytest.raises(ChatError) as e:
                    read_chat(f, strict=strict)
                assert str(e.value).startswith(f"{f}:{where}: ") and what in str(e.value), str(e.value)
            continue
        t = read_chat(f)
        if kind == "accepted":
            assert [u.text for u in t.utterances] == where and t.warnings == [], (f, t.utterances, t.warnings)
            assert [u.text for u in read_chat(f, strict=True).utterances] == where
        elif kind == "warning":
            assert any(w.startswith(f"{f}:{where}: ") and what in w for w in t.warnings), t.warnings
        else:
            assert [(d.line, d.what) for d in t.dropped] == [(where, kind)], t.dropped
            assert t.warnings == [f"{f}:{where}: {kind} dropped: " + t.warnings[0].split(" dropped: ")[1]]
            assert what in t.warnings[0] and t.warnings[0].split(" dropped: ")[1].startswith(t.dropped[0].reason)
            assert [u.line for u in t.utterances] == [where] and t.utterances[0].text == ("hello world." if kind ==
                                                                                          "annotation" else "")
            with pytest.raises(ChatError) as e:
                read_chat(f, strict=True)
            assert str(e.value).startswith(f"{f}:{where}: ") and what in str(e.value), str(e.value)


PUNCTUATION = re.compile(r"^\W+$")


def _pylangacq_word_count(utterance) -> int:
    """Words as pylangacq tokenizes the main tier, minus punctuation tokens ('.', '?', '‡', '+...', ...).

    pylangacq keeps a compound (ice+cream, how_about) as one token; our text splits it into words, so a
    compound counts as its parts here. With %mor handling off, tokens come from the main tier alone (with
    it on, pylangacq empties the tokens of every utterance whose %mor does not align).
    """
    return sum(len([p for p in re.split(r"[_+]", t.word) if p])
               for t in utterance.tokens if not PUNCTUATION.match(t.word))


def test_word_counts_agree_with_pylangacq(childes):
    files = sorted(childes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = pylangacq.CHAT.from_files(files, mor_tier=None, gra_tier=None, strict=False)
    total, disagree = 0, []
    for path, theirs in zip(reader.file_paths, reader.utterances(by_file=True)):
        theirs = [u for u in theirs if u.participant]  # drop @Comment-like header entries
        mine = childes[path].utterances
        assert len(mine) == len(theirs), path  # utterances align one to one, in file order
        for m, t in zip(mine, theirs):
            total += 1
            ours = len(re.findall(r"[\w'’-]+", m.text))
            if ours != _pylangacq_word_count(t):
                disagree.append(f"{path}:{m.line}: {m.raw!r} -> ours {m.text!r}, pylangacq {[x.word for x in t.tokens]}")
    agreement = 1 - len(disagree) / total
    print(f"\nword counts agree on {total - len(disagree)}/{total} utterances ({agreement:.4%}); the rest:")
    print("\n".join(disagree))
    # Known: "no (.) [/] no ." - pylangacq lets the pause absorb the [/] and keeps both "no"s; in CHAT
    # the pause is not a word, the retraced word is the first "no", so ours ("no.") is the right reading.
    assert total == 58008
    assert agreement >= 0.999


def test_spoken_forms_match_pylangacq_audible_words(shared_data):
    """pylangacq's `audible` view keeps the form said before a replacement, as --forms spoken does. It also keeps
    retraced words, xxx, fillers, [x N] repeats and drops shortened sounds, so compare the utterances with a
    replacement and none of those: there the words must be the same, one for one."""
    files = [str(f) for f in sorted((shared_data / "childes").rglob("*.cha")) if b"[: " in f.read_bytes()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = pylangacq.CHAT.from_files(files, mor_tier=None, gra_tier=None, strict=False)
    other_differences = re.compile(r"\(|\[/|\[x |\bxxx|\byyy|\bwww|&|(?<!\S)0|\[e\]")
    compared, differ = 0, []
    for path, theirs in zip(reader.file_paths, reader.utterances(by_file=True)):
        theirs = [u for u in theirs if u.participant]
        mine = read_chat(path).utterances
        assert len(mine) == len(theirs), path
        for m, t in zip(mine, theirs):
            if re.search(r"\[::? ", m.raw) and not other_differences.search(m.raw):
                compared += 1
                words = [p.lower() for w in t.audible.split() if not PUNCTUATION.match(w)
                         for p in re.split(r"[_+]", w) if p]
                if re.findall(r"[\w'’-]+", m.text) != words:
                    differ.append(f"{path}:{m.line}: {m.raw!r} -> ours {m.text!r}, pylangacq {t.audible!r}")
    assert compared == 302 and differ == [], differ
