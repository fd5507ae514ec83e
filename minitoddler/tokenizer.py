"""The lower-case byte-level BPE tokenizer: train it, save it in Hugging Face format, load it.

Saved as tokenizer.json + tokenizer_config.json (ChatML chat template as in SmolLM2-Instruct), so
`transformers.AutoTokenizer.from_pretrained(dir)` loads it and encodes identically. The normalizer
lower-cases, so callers never need to. Special tokens have fixed ids so every model agrees:
<|endoftext|>=0 (BOS, EOS and document separator), <|im_start|>=1, <|im_end|>=2, <|pad|>=3.
"""
import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

EOT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, PAD]  # ids 0, 1, 2, 3
EOT_ID, IM_START_ID, IM_END_ID, PAD_ID = range(4)
DEFAULT_SYSTEM_PROMPT = "You are a 2-3-year-old child speaking in short, simple sentences."
# SmolLM2-Instruct's ChatML template with the toddler's default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], out_dir, vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Train byte-level BPE on texts, save tokenizer.json + tokenizer_config.json to out_dir, return it.

    vocab_size counts the 4 special tokens and the 256 byte symbols; on a small corpus BPE may stop
    earlier (no pair left that occurs min_frequency times), so the vocabulary can come out smaller.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 260 entries")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    save_tokenizer(tok, out_dir)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir) -> Path:
    """Write tokenizer.json and a transformers-compatible tokenizer_config.json to out_dir."""
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != token_id:
            raise ValueError(f"special token {token} must have id {token_id}, has {tok.token_to_id(token)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": PAD,
        "additional_special_tokens": [IM_START, IM_END],
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                                          "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)},
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def load_tokenizer(directory, strict: bool = True) -> Tokenizer:
    """The tokenizers.Tokenizer saved in directory (a tokenizer dir or an exported model dir).

    strict: it must be a minitoddler tokenizer (our special tokens at our ids); strict=False takes any
    tokenizer.json as it is (SmolLM2's, a judge's or teacher's)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {directory}: pass a model directory exported by train_pretrain.py or a "
            f"tokenizer directory; train one with `python -m minitoddler.data.shards --corpus CORPUS/cds --out DIR` "
            f"(writes DIR/tokenizer/) or minitoddler.tokenizer.train_tokenizer(texts, out_dir)")
    tok = Tokenizer.from_file(str(path))
    if strict:
        for token_id, token in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(token) != token_id:
                raise ValueError(f"{path}: special token {token} should have id {token_id} but has "
                                 f"{tok.token_to_id(token)}; this is not a minitoddler tokenizer")
    return tok
