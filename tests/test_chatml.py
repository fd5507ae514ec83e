"""ChatML rendering: ids equal transformers' apply_chat_template (our template and SmolLM2-Instruct's),
the assistant-only mask, and adding the ChatML tokens to a base model that lacks them."""
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from minitoddler.chatml import (IM_END, IM_START, add_chat_tokens, caregiver_chat, render_chat,
                              template_system_prompt)
from minitoddler.config import preset
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer, train_tokenizer

# HuggingFaceTB/SmolLM2-135M-Instruct's tokenizer_config.json "chat_template", verbatim.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEXTS = ["where is the doggie ?", "Mommy, I want juice!", "that's a big truck. vroom vroom.",
         "do you want more apple ?", "no! mine. me do it.", "Caregiver: what's that? it's a birdie.",
         "You are a 2-3-year-old child speaking in short, simple sentences."] * 20

CONVERSATIONS = [
    [{"role": "user", "content": "Caregiver: where is the doggie?"},
     {"role": "assistant", "content": "doggie outside."}],
    [{"role": "system", "content": "You are a toddler."},
     {"role": "user", "content": "Caregiver: Do you want MORE apple?"},
     {"role": "assistant", "content": "no! me do it"},
     {"role": "user", "content": "Caregiver: okay.\nhere you go"},
     {"role": "assistant", "content": "  juice   please ! 🍎"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
]


def smollm2_style_dir(tmp_path):
    """A small byte-level BPE with SmolLM2's special tokens (ids 0-2), cased like SmolLM2, and
    SmolLM2-Instruct's real chat template and special-token settings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / "smollm2"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "chat_template": SMOLLM2_TEMPLATE, "bos_token": IM_START,
        "eos_token": IM_END, "pad_token": IM_END, "unk_token": "<|endoftext|>", "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 8192}))
    return d


def hf_ids(tok_dir, messages, add_generation_prompt):
    out = AutoTokenizer.from_pretrained(str(tok_dir)).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def our_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ours")
    train_tokenizer(TEXTS, d, vocab_size=400)
    return d


def test_ids_equal_transformers_with_our_template(our_dir):
    tok = load_tokenizer(our_dir)
    assert template_system_prompt(our_dir) == DEFAULT_SYSTEM_PROMPT
    for messages in CONVERSATIONS:
        for gen in (False, True):
            ours = render_chat(tok, messages, add_generation_prompt=gen).ids
            assert ours == hf_ids(our_dir, messages, gen), messages
    prompt_only = caregiver_chat("where's your nose?", None, system_prompt=None)
    assert render_chat(tok, prompt_only, add_generation_prompt=True).ids == hf_ids(our_dir, prompt_only, True)


def test_ids_equal_transformers_with_smollm2_template(tmp_path):
    d = smollm2_style_dir(tmp_path)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    default = template_system_prompt(d)
    assert default == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages in CONVERSATIONS:
        for gen in (False, True):
            rendered = render_chat(tok, messages, add_generation_prompt=gen, default_system=default)
            assert rendered.ids == hf_ids(d, messages, gen), messages
    # Our default would give different ids: the comparison above really depends on the system prompt.
    assert render_chat(tok, CONVERSATIONS[0]).ids != hf_ids(d, CONVERSATIONS[0], False)


def test_mask_covers_exactly_assistant_content_and_im_end(our_dir):
    tok = load_tokenizer(our_dir)
    messages = CONVERSATIONS[1]
    r = render_chat(tok, messages)
    im_end = tok.token_to_id(IM_END)
    # Contiguous runs of mask=1: one per assistant message, each ending in <|im_end|>, decoding to its text.
    runs, current = [], []
    for i, m in enumerate(r.mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    assert current == [] and len(runs) == 2
    for run, content in zip(runs, ["no! me do it", "  juice   please ! 🍎"]):
        assert r.ids[run[-1]] == im_end
        assert tok.decode([r.ids[i] for i in run[:-1]]) == content.lower()  # the normalizer lower-cases
        before = tok.decode(r.ids[:run[0]], skip_special_tokens=False)
        assert before.endswith(f"{IM_START}assistant\n")
    # Everything unmasked is the system prompt, caregiver lines or markup; the per-token message index agrees.
    assert sum(r.mask) == sum(len(run) for run in runs)
    for i, m in enumerate(r.message):
        if m >= 0:
            assert r.mask[i] == (messages[m]["role"] == "assistant")
    # Empty assistant content: only the <|im_end|> is trained.
    empty = render_chat(tok, CONVERSATIONS[2])
    assert [t for t, m in zip(empty.ids, empty.mask) if m] == [im_end]


def test_bad_messages_are_rejected(our_dir):
    tok = load_tokenizer(our_dir)
    with pytest.raises(ValueError, match="message 0"):
        render_chat(tok, [{"role": "child", "content": "hi"}])
    with pytest.raises(ValueError, match="message 1"):
        render_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant"}])


def test_add_chat_tokens_to_base_without_them(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(base / "tokenizer.json"))
    n = tok.get_vocab_size()
    cfg = preset("tiny")
    cfg.vocab_size = n
    torch.manual_seed(0)
    model = ToddlerLM(cfg)
    old = model.embed_tokens.weight.detach().clone()
    ids = torch.tensor([tok.encode("where is the doggie ?").ids])
    logits_before = model(ids)

    assert add_chat_tokens(model, base, tmp_path / "chat") == [IM_START, IM_END]
    new = Tokenizer.from_file(str(tmp_path / "chat" / "tokenizer.json"))  # not minitoddler's fixed ids
    assert (new.token_to_id(IM_START), new.token_to_id(IM_END)) == (n, n + 1)
    assert model.cfg.vocab_size == n + 2 and model.embed_tokens.weight.shape == (n + 2, 64)
    assert model.lm_head.weight is model.embed_tokens.weight  # still tied
    torch.testing.assert_close(model.embed_tokens.weight[:n], old)
    torch.testing.assert_close(model.embed_tokens.weight[n], old.mean(0))
    torch.testing.assert_close(model.embed_tokens.weight[n + 1], old.mean(0))
    torch.testing.assert_close(model(ids)[..., :n], logits_before)  # old tokens' logits unchanged
    # The written directory renders like transformers does, with the toddler system prompt by default.
    messages = caregiver_chat("do you want more apple?", "no apple", system_prompt=None)
    assert render_chat(new, messages).ids == hf_ids(tmp_path / "chat", messages, False)
    # A second call finds the tokens and changes nothing.
    assert add_chat_tokens(model, tmp_path / "chat", tmp_path / "again") == []
    assert model.cfg.vocab_size == n + 2
    # Untied embeddings: the output matrix grows too, its new rows at its own mean.
    cfg.tie_word_embeddings, cfg.vocab_size = False, n
    untied = ToddlerLM(cfg)
    head = untied.lm_head.weight.detach().clone()
    add_chat_tokens(untied, base, None)
    assert untied.lm_head.weight.shape == (n + 2, 64) and untied.lm_head.weight is not untied.embed_tokens.weight
    torch.testing.assert_close(untied.lm_head.weight[n + 1], head.mean(0))
    assert untied(ids).shape[-1] == n + 2
