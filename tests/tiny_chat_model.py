"""Tiny random-weight model directories with a real BPE tokenizer, for the chat, server, page and eval tests."""
import json
from pathlib import Path

import torch

from minitoddler.checkpoint import save_model
from minitoddler.config import ModelConfig
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import train_tokenizer


def random_lm_dir(texts: list[str], out: Path, context: int, vocab_size: int, **config) -> Path:
    """A BPE tokenizer trained on `texts` and a random 2-layer model (seed 0; `config` overrides), in `out`/model."""
    tok = train_tokenizer(texts, out / "tokenizer", vocab_size=vocab_size)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, **config)
    save_model(ToddlerLM(cfg), out / "model", tokenizer=out / "tokenizer")
    return out / "model"


def make_model_dir(shared_data: Path, out: Path, context: int = 128) -> Path:
    """tokenizer (512 entries, trained on real caregiver/child turns) + a 2-layer model, saved in `out`."""
    pairs = json.loads((shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json").read_text())
    return random_lm_dir([f"{p['prompt']}\n{p['chosen']}" for p in pairs[:2000]], out, context, 512,
                         initializer_range=0.3)  # a wide init gives varied greedy replies, not one repeated token
