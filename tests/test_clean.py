"""Each cleaning rule of minitoddler.data.clean, one case (or a few) per rule, expected text written by hand."""
import json
import re

import pytest

from minitoddler.data.clean import MarkupError, clean_utterance, normalize_benchmark_text

RULES = {
    "plain words, lower-case, no space before punctuation": ("Here you go , Eve .", "here you go, eve."),
    "retracing of a group keeps the correction": ("<a b> [//] c .", "c."),
    "retracing scope is the previous word only": ("the dog [//] the cat ran .", "the the cat ran."),
    "repetition [/] keeps one copy": ("I [/] I want that .", "i want that."),
    "multiple retracing and reformulation": ("I want the [///] give me <kinda like> [/-] that .", "i want give me that."),
    "nested group inside a retraced group": ("<<happy and> [?] sad> [//] glad .", "glad."),
    "replacement then retracing": ("tika@u [: kitty] [* p:n] [//] kitty is nice .", "kitty is nice."),
    "exclude marker [e] drops the previous word": ("this is [e] child speaking .", "this child speaking."),
    "events are dropped": ("&=laughs look &=points:ball here .", "look here."),
    "fillers are dropped": ("&-uh apple .", "apple."),
    "old-style fillers and fragments are dropped": ("&uh I &wha want it .", "i want it."),
    "fragments, babbling, other speaker's words dropped": ("&+fr &~baba he said &*MOT:yeah no .", "he said no."),
    "long features and nonvocal markers dropped": ("&{l=X deal with &}l=X it &{n=BANG} .", "deal with it."),
    "unintelligible and untranscribed words dropped": ("xxx I want yyy www it .", "i want it."),
    "unintelligible words with markers still dropped": ("xxx@c xxx:: want xxx_yyy it .", "want it."),
    "no leading punctuation": ("xxx ‡ hi there .", "hi there."),
    "omitted words dropped": ("0she want 0is her toy .", "want her toy."),
    "annotations dropped": ("you [!] did [= really] that [?] [!!] [=! whispers] [% comment] [x 3] .",
                            "you did that."),
    "postcodes and precodes dropped": ("[- spa] quiero galletas . [+ IMP] [+ bch]", "quiero galletas."),
    "free codes dropped": ("[^ pointing] that one .", "that one."),
    # older CHAT: a dependent tier written inline is a comment (Fletcher, Bernstein, MacWhinney corpora)
    "inline act tier on an omission": ("0 [%act: sighs deeply] .", ""),
    "inline act tier after words": ("a goat [%act: it's a cow] .", "a goat."),
    "inline com and sit tiers": ("yes [%com: softly] please [%sit:at the door] .", "yes please."),
    "clause separator ; glued to a word": ("that's not a sheep; it's a bear .", "that's not a sheep, it's a bear."),
    "clause separator ; inside a group": ("<the lunch at one; the xxx at five> [<] .", "the lunch at one, the at five."),
    "clause separator ; on its own": ("well ; okay .", "well, okay."),
    "older pauses # ## ### and timed": ("wait # a ## minute ### now #2.5 #1:02.5 .", "wait a minute now."),
    "word-initial ^ (older prosodic mark) with shortenings": ("^ever(y)body hold (h)im down .",
                                                              "everybody hold him down."),
    "word-initial ^ on a later word": ("tape ^recorder ?", "tape recorder?"),
    "overlap markers dropped": ("if we have <some time> [>] we ⌈ can ⌉ ⌊2 go ⌋2 .", "if we have some time we can go."),
    "pauses dropped": ("I (.) want (3.) a cookie (..) please (1:30.5) .", "i want a cookie please."),
    "media bullets dropped": ("hello there . \x152041689_2042652\x15", "hello there."),
    "shortenings restored": ("(be)cause I goin(g) o(f) do(n't) know .", "because i going of don't know."),
    "special form markers stripped": ("doggy@c run@x b@l mama@f hao3@s:zho .", "doggy run b mama hao3."),
    "compounds split": ("how_about an ice+cream ?", "how about an ice cream?"),
    "prosody inside words removed": ("no:: o^kay ˈhello ple:ase .", "no okay hello please."),
    "CA voice-quality marks removed": ("°softer° and ∆faster∆ p↑itch ↫s-s↫segment .", "softer and faster pitch segment."),
    "trailing off": ("I was going to the +...", "i was going to the..."),
    "interruption and self-interruption": ("what do they +/.", "what do they."),
    "self-interruption": ("and then she +//.", "and then she."),
    "question terminators": ("+< you want it +/?", "you want it?"),
    "quotation terminator and linker": ('+" please give me honey +"/.', "please give me honey."),
    "vocative and tag markers become commas": ("oh ‡ I took it „ right ?", "oh, i took it, right?"),
    "a terminator glued to the last word": ("hello.", "hello."),
    "dangling commas are removed": ("xxx , I want that , xxx .", "i want that."),
    "nothing speakable left": ("xxx .", ""),
    "only an event": ("&=laughs .", ""),
    "an omission only": ("0 [= did nothing] .", ""),
    "underline marks removed": ("we need \x02\x01 to do \x02\x02 something .", "we need to do something."),
    "quotation marks removed": ("she said “I want cookies” .", "she said i want cookies."),
    "hebrew prefix marker": ("קקי ו#פיפי .", "קקי ופיפי."),
}


@pytest.mark.parametrize("raw,expected", RULES.values(), ids=RULES.keys())
def test_rule(raw, expected):
    assert clean_utterance(raw) == expected


def test_keep_fillers_keeps_dash_fillers_and_old_fillers():
    assert clean_utterance("&-uh apple &+fr &=laughs .", keep_fillers=True) == "uh apple."
    assert clean_utterance("&um I &wha want it .", keep_fillers=True) == "um i want it."
    assert clean_utterance("easy &-you_know .", keep_fillers=True) == "easy you know."


BROKEN = {
    "unclosed bracket": ("hello [: world .", "unmatched '['"),
    "bare bracket": ("[ .", "unmatched '['"),
    "unknown annotation": ("hello [& text] world .", "unknown annotation"),
    "unmatched <": ("hello <world .", "'<' without a matching '>'"),
    "unmatched >": ("hello world> [/] .", "'>' without a matching '<'"),
    "nested group without annotation": ("hello <world <foo> bar> .", "nested <...> group"),
    "unclosed parenthesis": ("hello (world .", "unclosed '('"),
    "@ without form type": ("hello@ .", "form type"),
    "terminator inside an event": ("&=laughs! wow!", "terminator inside an event"),
    "malformed long feature": ("hello &{laughing} world &{crying} .", "malformed long feature"),
    "control character": ("hello\x01world .", "control character"),
    "stray symbols": ("hello $$ world .", "unexpected characters in '$$'"),
    "a caret alone": ("hello ^ world .", "unexpected characters in '^'"),
    "retrace with nothing before it": ("[/] hello .", "no word before it"),
    "unknown terminator": ("hello +x", "unknown terminator"),
}


@pytest.mark.parametrize("raw,message", BROKEN.values(), ids=BROKEN.keys())
def test_broken_markup_raises_instead_of_guessing(raw, message):
    with pytest.raises(MarkupError, match=re.escape(message)):
        clean_utterance(raw)


def test_unannotated_top_level_group_keeps_its_words():
    # The TalkBank reference corpus has this; a bare <...> marks no retracing, so the words stay.
    assert clean_utterance("<I don't> &-uh I know xxx .") == "i don't i know."


FORMS = {  # raw: (spoken, target); the CHILDES lines are from ../shared/data/childes/brown-eve
    "it falled [: fell] [* +ed] .": ("it falled.", "it fell."),  # eve12.cha:92
    "I <threw> [/] throwed [: threw] [* +ed] it .": ("i throwed it.", "i threw it."),  # eve18.cha:5027
    "do you wan(t) a piece a [: of][* fil] cheese ?": ("do you want a piece a cheese?", "do you want a piece of cheese?"),
    "I dunno [: don't know] .": ("i dunno.", "i don't know."),
    "rocking+house [: rocking+horse] [*] ?": ("rocking house?", "rocking horse?"),
    "<me carry> [: I carry] bag .": ("me carry bag.", "i carry bag."),
    "tika@u [:: kitty] .": ("tika.", "kitty."),
}


@pytest.mark.parametrize("raw", FORMS)
def test_forms_spoken_keeps_what_was_said_target_takes_the_replacement(raw):
    spoken, target = FORMS[raw]
    assert clean_utterance(raw) == clean_utterance(raw, forms="spoken") == spoken
    assert clean_utterance(raw, forms="target") == target


def test_forms_must_be_spoken_or_target():
    with pytest.raises(ValueError, match="forms must be one of"):
        clean_utterance("hi .", forms="said")


def test_markup_error_has_a_fixed_reason_and_the_unknown_annotation():
    with pytest.raises(MarkupError) as e:
        clean_utterance("hello [& text] world .")
    assert (e.value.reason, e.value.token) == ("unknown annotation", "[& text]")
    with pytest.raises(MarkupError) as e:
        clean_utterance("hello <world .")
    assert (e.value.reason, e.value.token) == ("'<' without a matching '>'", "")


BENCHMARK = {  # CHAT-spaced benchmark text -> the training format
    "Blue .": "blue.",
    "*MOT: you are green ?": "*MOT: you are green?",
    "*CHI: Mummy , don't say “no” to me .": "*CHI: mummy, don't say no to me.",
    "*CHI: what's a momma≠ lamb doing ?": "*CHI: what's a momma lamb doing?",
    "*MOT: that'll be good won't it ↗": "*MOT: that'll be good won't it",
    "*CHI: no, we not .": "*CHI: no, we not.",
    "*CHI: - head no .": "*CHI: head no.",  # a lone '-' is not readable: left out, the rest is kept
    "The cats sleep.": "the cats sleep.",
}


@pytest.mark.parametrize("text", BENCHMARK)
def test_normalize_benchmark_text(text):
    assert normalize_benchmark_text(text) == BENCHMARK[text]


def test_normalized_benchmark_matches_prepared_triplet_lines(shared_data):
    """The dialogue benchmark's lines, normalized, look like the triplet lines prepare writes."""
    pairs = json.loads((shared_data / "eval/dialogue-minimal-pairs/dialogue_eval_words.json").read_text())
    lines = [normalize_benchmark_text(p[k]) for p in pairs[:500] for k in ("prompt", "chosen", "rejected")]
    assert all(line.startswith(("*MOT: ", "*CHI: ", "*FAT: ")) for line in lines)
    assert not any(" ." in line or " ?" in line or line != line[:6] + line[6:].lower() for line in lines)
    assert normalize_benchmark_text(pairs[0]["chosen"]) == "*CHI: i am blue."  # "*CHI: I am blue ."
