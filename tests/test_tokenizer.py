"""The lower-case byte-level BPE tokenizer: special ids, lower-casing, Hugging Face compatibility."""
import json

import pytest
import transformers  # required test dependency (requirements-dev.txt): a missing one fails here

from minitoddler.data.chat import read_chat
from minitoddler.data.prepare import SAMPLE_DIR
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, SPECIAL_TOKENS, load_tokenizer, train_tokenizer

SENTENCES = [
    "Do you want MORE juice?", "i'm a big fish.", "The doggy's running, look!", "Zoë ate crème brûlée 🍰.",
    "two  spaces and a\ttab\nand a newline", "<|im_start|>user\nCaregiver: what's that?<|im_end|>\n",
    "<|endoftext|>more cookie.<|endoftext|>", "", "   ",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = [u.text for f in sorted(SAMPLE_DIR.glob("*.cha")) for u in read_chat(f).utterances]
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, out, vocab_size=8192)
    return out


def test_special_token_ids_and_vocab_size(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert 260 < tok.get_vocab_size() <= 8192
    assert tok.encode("<|im_start|>user<|im_end|><|endoftext|><|pad|>").ids[:1] == [1]
    assert [i for i in tok.encode("<|im_start|>user<|im_end|><|endoftext|><|pad|>").ids if i < 4] == [1, 2, 0, 3]


def test_lower_cases_and_round_trips(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.encode("Do You WANT More JUICE?").ids == tok.encode("do you want more juice?").ids
    for text in SENTENCES:
        if "<|" not in text:
            assert tok.decode(tok.encode(text).ids) == text.lower()


def test_small_vocab_is_respected(tmp_path):
    texts = [u.text for u in read_chat(SAMPLE_DIR / "01-blocks-tower.cha").utterances]
    tok = train_tokenizer(texts, tmp_path, vocab_size=300)
    assert tok.get_vocab_size() <= 300
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(texts, tmp_path, vocab_size=100)


def test_transformers_autotokenizer_loads_and_encodes_identically(tok_dir):
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    for text in SENTENCES:
        assert hf(text)["input_ids"] == tok.encode(text).ids, text
        assert hf.decode(hf(text)["input_ids"]) == tok.decode(tok.encode(text).ids, skip_special_tokens=False)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 0, 3)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert len(hf) == tok.get_vocab_size()


def test_chat_template_is_chatml_with_the_toddler_system_prompt(tok_dir):
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == (  # SmolLM2-Instruct's ChatML template, our default system prompt
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a 2-3-year-old child speaking in short, simple sentences.<|im_end|>\n' }}"
        "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    messages = [{"role": "user", "content": "Caregiver: what's that?"}]
    expected = ("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
                "<|im_start|>user\nCaregiver: what's that?<|im_end|>\n<|im_start|>assistant\n")
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    own_system = [{"role": "system", "content": "Be brief."}] + messages + [{"role": "assistant", "content": "doggy."}]
    assert hf.apply_chat_template(own_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCaregiver: what's that?<|im_end|>\n"
        "<|im_start|>assistant\ndoggy.<|im_end|>\n")
    assert DEFAULT_SYSTEM_PROMPT == "You are a 2-3-year-old child speaking in short, simple sentences."


def test_load_tokenizer_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json in .*python -m minitoddler.data.shards"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_strict_refuses_a_foreign_tokenizer(tmp_path):
    """A tokenizer whose special tokens sit at other ids (SmolLM2's, say) is refused by default, so a
    minitoddler script never trains with wrong pad/BOS ids, and taken as it is with strict=False."""
    from tokenizers import Tokenizer, models
    foreign = Tokenizer(models.WordLevel({"<|im_start|>": 0, "<|endoftext|>": 1, "hi": 2}, unk_token="hi"))
    foreign.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="should have id 0 but has 1; this is not a minitoddler tokenizer"):
        load_tokenizer(tmp_path)
    assert load_tokenizer(tmp_path, strict=False).token_to_id("<|endoftext|>") == 1
