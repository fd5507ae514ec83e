"""The decoder against transformers' LlamaForCausalLM (the independent reference), both checkpoint
directions, and the bookkeeping numbers."""
import dataclasses

import pytest
import torch

from minitoddler.checkpoint import load_model, save_model
from minitoddler.config import ModelConfig, preset
from minitoddler.model import ToddlerLM, linear

import transformers  # test-only dependency (requirements-dev.txt)


def hf_roundtrip(cfg: ModelConfig, tmp_path, seq=40, batch=2):
    """Our random model saved by us, loaded by transformers: logits must agree; and the reverse."""
    torch.manual_seed(0)
    ours = ToddlerLM(cfg).eval()
    save_model(ours, tmp_path / "ours")
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    theirs.save_pretrained(tmp_path / "theirs")
    back = load_model(tmp_path / "theirs").eval()
    with torch.no_grad():
        back_diff = (back(ids) - ours(ids)).abs().max().item()
    return diff, back_diff


def test_tiny_matches_transformers_both_ways(tmp_path):
    diff, back_diff = hf_roundtrip(preset("tiny"), tmp_path)
    assert diff <= 1e-4
    assert back_diff == 0.0


def test_untied_embeddings_and_llama3_rope_scaling_match_transformers(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), tie_word_embeddings=False, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    diff, back_diff = hf_roundtrip(cfg, tmp_path, seq=200)  # well past the original context
    assert diff <= 1e-4
    assert back_diff == 0.0


def test_toddler_155m_full_size_matches_transformers(tmp_path):
    diff, back_diff = hf_roundtrip(preset("toddler-155m"), tmp_path, seq=64, batch=1)
    assert diff <= 1e-4
    assert back_diff == 0.0


def test_left_padding_matches_transformers(tmp_path):
    torch.manual_seed(0)
    ours = ToddlerLM(preset("tiny")).eval()
    save_model(ours, tmp_path)
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 8192, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), theirs(ids, attention_mask=mask).logits
    assert (a[0, 5:] - b[0, 5:]).abs().max() <= 1e-4
    assert (a[1] - b[1]).abs().max() <= 1e-4
    # A left-padded row computes what the unpadded row computes alone.
    with torch.no_grad():
        alone = ours(ids[:1, 5:])
    assert (a[0, 5:] - alone[0]).abs().max() <= 1e-4


def test_toddler_155m_size_and_flops():
    model = ToddlerLM(preset("toddler-155m"))
    c = model.cfg
    per_layer = (2 * c.hidden_size * c.hidden_size                      # q, o
                 + 2 * c.hidden_size * c.num_key_value_heads * c.head_dim  # k, v
                 + 3 * c.hidden_size * c.intermediate_size               # gate, up, down
                 + 2 * c.hidden_size)                                    # two norms
    by_hand = c.vocab_size * c.hidden_size + c.num_hidden_layers * per_layer + c.hidden_size
    assert model.num_parameters() == by_hand
    assert 150e6 < by_hand < 160e6
    matmul = c.num_hidden_layers * (per_layer - 2 * c.hidden_size) + c.vocab_size * c.hidden_size
    attention = 4 * c.num_hidden_layers * 256 * c.hidden_size
    assert model.flops_per_token(256) == 3 * (2 * matmul + attention)


def test_readme_numbers_for_toddler_155m():
    """The figures of docs/training.md, written out: 155,933,568 parameters, 150,428,544 without the embedding,
    1.00 GFLOP per token for a training step at context 256 (999,343,296 by hand: 3 x (2 x 155,891,232
    matmul weights + 4 x 31 layers x 256 x 672))."""
    with torch.device("meta"):  # shapes only: counting needs no memory
        model = ToddlerLM(preset("toddler-155m"))
    assert model.num_parameters() == 155_933_568
    assert model.num_parameters(exclude_embeddings=True) == 150_428_544
    assert model.flops_per_token(256) == 999_343_296
    assert model.flops_per_token(256, training=False) == 333_114_432
    untied = ToddlerLM(dataclasses.replace(preset("tiny"), tie_word_embeddings=False))
    # tiny: 2 layers x (2*64*64 + 2*64*32 + 3*64*172 + 2*64) + 64 = 90,944; embedding and head 8192*64 each
    assert untied.num_parameters(exclude_embeddings=True) == 90_944 + 524_288
    assert untied.num_parameters() == 90_944 + 2 * 524_288


# HuggingFaceTB/SmolLM2-135M-Instruct and SmolLM2-360M-Instruct config.json, the architecture keys as
# published (the presets carry the Instruct token ids: <|im_start|> = 1 is BOS, <|im_end|> = 2 is EOS).
SMOLLM2_CONFIGS = {
    "smollm2-135m": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
                     "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
                     "rope_theta": 100000, "rope_scaling": None, "rms_norm_eps": 1e-05,
                     "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"},
    "smollm2-360m": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
                     "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "max_position_embeddings": 8192,
                     "rope_theta": 100000, "rope_scaling": None, "rms_norm_eps": 1e-05,
                     "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"},
}


@pytest.mark.parametrize("name", sorted(SMOLLM2_CONFIGS))
def test_smollm2_presets_equal_the_published_configs(name):
    published = ModelConfig.from_hf_dict(SMOLLM2_CONFIGS[name])
    ours = preset(name)
    keys = [k for k in SMOLLM2_CONFIGS[name] if k not in ("architectures", "model_type", "hidden_act")]
    assert {k: getattr(ours, k) for k in keys} == {k: getattr(published, k) for k in keys}
    assert ours.head_dim == 64
    # SmolLM2's model cards: 135M and 360M parameters
    with torch.device("meta"):
        model = ToddlerLM(ours)
    assert model.num_parameters() == {"smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120}[name]


def test_context_overflow_is_a_clear_error():
    model = ToddlerLM(preset("tiny"))
    with pytest.raises(ValueError, match="longer than the model's context of 256"):
        model(torch.zeros(1, 257, dtype=torch.long))


def test_config_json_roundtrip_keeps_unknown_keys(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), extra={"_name_or_path": "x", "use_cache": True})
    cfg.save(tmp_path / "config.json")
    back = ModelConfig.load(tmp_path / "config.json")
    assert back == cfg


@pytest.mark.parametrize("shape", [(8, 1, 48), (3, 5, 48), (40, 48)])
def test_linear_few_rows_path_equals_f_linear(shape):
    """`linear` takes weight @ x.T for <= 32 rows on CPU and F.linear otherwise: values and gradients
    must equal F.linear's either way (the 40-row case checks the threshold's other side)."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(24, 48, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    ours = linear(x, w, b)
    grads = torch.autograd.grad(ours.square().sum(), (x, w, b))
    ref = torch.nn.functional.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, b))
    assert ours.shape == ref.shape == (*shape[:-1], 24)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_logits_to_keep_returns_the_last_positions():
    torch.manual_seed(0)
    model = ToddlerLM(preset("tiny")).eval()
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_to_keep=1), full[:, -1:])
        torch.testing.assert_close(model(ids, logits_to_keep=3), full[:, -3:])


def test_a_chunk_after_cached_tokens_is_causal_from_the_cache_on():
    """Prefill 5 tokens, then feed 4 at once: each new token sees the cache and the chunk up to itself,
    as in one full causal pass (SDPA's is_causal would align the chunk's queries with the first keys)."""
    from minitoddler.model import KVCache
    torch.manual_seed(0)
    model = ToddlerLM(preset("tiny")).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.empty(model.cfg, 2, 9, "cpu", torch.float32)
        first = model(ids[:, :5], cache=cache)
        chunk = model(ids[:, 5:], cache=cache)
    assert torch.allclose(first, full[:, :5], atol=1e-5) and torch.allclose(chunk, full[:, 5:], atol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_compiles_once_for_every_length_forward_and_backward(lora):
    """torch.compile(dynamic=True, fullgraph=True) traces the whole model (no graph break) and serves three
    sequence lengths with at most two graphs, LoRA included: SFT, DPO and RL batches vary in length.
    (A bool of the symbolic length in the attention broke the graph in every layer.)"""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from minitoddler.lora import LoraConfig, apply_lora
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny"), num_hidden_layers=1, vocab_size=256)
    model = ToddlerLM(cfg)
    if lora:
        apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    for T in (7, 13, 21):
        ids = torch.randint(0, 256, (2, T))
        out = compiled(ids)
        out.logsumexp(-1).mean().backward()
        torch.testing.assert_close(out, model(ids), atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] <= 2
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch._dynamo.reset()


def test_loading_builds_on_the_meta_device_without_a_random_init(tmp_path):
    """load_model allocates the weights on the target device and copies the file in: no initialisation
    (which drew ~155M random numbers for nothing, on the host, before a 3B teacher moved to its GPU)."""
    torch.manual_seed(0)
    model = ToddlerLM(preset("tiny"))
    save_model(model, tmp_path)
    state = torch.get_rng_state()
    loaded = load_model(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)  # nothing random ran
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
