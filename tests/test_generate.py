"""Generation: cached greedy decoding equals recomputation from scratch, sampling filters equal a naive
implementation, temperature samples softmax(logits / T), seeds reproduce, stop tokens end a row."""
import dataclasses
import math

import pytest
import torch

from minitoddler.config import ModelConfig, preset
from minitoddler.generate import filter_logits, generate
from minitoddler.logprobs import sequence_logprobs, token_logprobs
from minitoddler.model import ToddlerLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # A large init spreads the logits, so greedy paths are varied rather than one repeated token.
    return ToddlerLM(dataclasses.replace(preset("tiny"), initializer_range=0.3)).eval()


PROMPTS = [[5, 17, 300], [9, 8, 7, 6, 5, 4, 3, 200], [42], [1000, 2000, 3000, 4000]]


def greedy_without_cache(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_equals_recomputed_greedy(model):
    out = generate(model, PROMPTS, max_new_tokens=20)
    for prompt, completion in zip(PROMPTS, out):
        assert completion == greedy_without_cache(model, prompt, 20)
    assert len({tuple(c) for c in out}) == len(PROMPTS)  # the test is not trivially passing
    assert all(len(set(c)) > 3 for c in out)


def test_stop_tokens_end_each_row_and_are_kept(model):
    full = generate(model, PROMPTS, max_new_tokens=20)
    stop = full[1][5]
    out = generate(model, PROMPTS, max_new_tokens=20, stop_ids=[stop])
    for f, o in zip(full, out):
        cut = f.index(stop) + 1 if stop in f else len(f)
        assert o == f[:cut]


def test_seeded_sampling_reproduces_and_top_k_1_is_greedy(model):
    a = generate(model, PROMPTS, 15, temperature=1.0, top_p=0.9, seed=3)
    b = generate(model, PROMPTS, 15, temperature=1.0, top_p=0.9, seed=3)
    c = generate(model, PROMPTS, 15, temperature=1.0, top_p=0.9, seed=4)
    assert a == b and a != c
    assert generate(model, PROMPTS, 15, temperature=0.7, top_k=1, seed=5) == generate(model, PROMPTS, 15)


def test_filters_match_naive_definition():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    k_out = filter_logits(logits, top_k=7, top_p=None)
    for row, out in zip(logits, k_out):
        keep = set(torch.argsort(row, descending=True)[:7].tolist())
        assert {i for i in range(50) if out[i] > float("-inf")} == keep
    p_out = filter_logits(logits, top_k=None, top_p=0.6)
    for row, out in zip(logits, p_out):
        probs = row.softmax(-1)
        keep, total = set(), 0.0
        for i in torch.argsort(row, descending=True).tolist():  # smallest prefix reaching p
            keep.add(i)
            total += probs[i].item()
            if total >= 0.6:
                break
        assert {i for i in range(50) if out[i] > float("-inf")} == keep


def test_prompt_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        generate(model, [[1] * 250], max_new_tokens=10)


def test_sequence_logprobs_match_a_naive_loop(model):
    prefixes = [[0], [0, 5, 6], [], [0]]
    conts = [[7, 8, 9], [10], [11, 12, 13, 14], [15] * 30]
    got = sequence_logprobs(model, prefixes, conts, batch_size=3)
    for i, (p, c) in enumerate(zip(prefixes, conts)):
        seq = p + c
        with torch.no_grad():
            lp = model(torch.tensor([seq]))[0].log_softmax(-1)
        start = max(len(p), 1)
        expected = sum(lp[t - 1, seq[t]].item() for t in range(start, len(seq)))
        assert got[i].item() == pytest.approx(expected, abs=1e-4)


def test_token_logprobs_left_padded_equal_unpadded(model):
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = token_logprobs(model, ids, mask)
        alone = token_logprobs(model, ids[:1, 2:])
    assert torch.allclose(padded[0, 2:], alone[0], atol=1e-5)


def test_on_token_sees_every_step_and_can_stop(model):
    plain = generate(model, PROMPTS, max_new_tokens=12)
    steps = []
    assert generate(model, PROMPTS, max_new_tokens=12, on_token=steps.append) == plain  # observing changes nothing
    assert [list(col) for col in zip(*steps)] == plain
    stop = plain[1][3]  # row 1 ends at step 4; later steps report pad_id 0 for it
    steps = []
    generate(model, PROMPTS, max_new_tokens=12, stop_ids=[stop], on_token=steps.append)
    assert [s[1] for s in steps][:4] == plain[1][:4] and all(s[1] == 0 for s in steps[4:])
    seen = []
    short = generate(model, PROMPTS, max_new_tokens=12, on_token=lambda t: seen.append(t) or len(seen) == 5)
    assert len(seen) == 5 and short == [c[:5] for c in plain]


def test_temperature_samples_softmax_of_logits_over_t():
    """A model whose next-token logits are known and the same after every token (blocks add nothing,
    every embedding is the ones vector, the head reads its first coordinate): the frequencies of
    10,000 sampled tokens match softmax(logits / T) worked out by hand, for T = 0.5 and 2."""
    logits = [2.0, 1.0, 0.0, -1.0, 0.5, -2.0]
    cfg = ModelConfig(vocab_size=6, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=False)
    model = ToddlerLM(cfg).eval()
    with torch.no_grad():
        model.layers[0].self_attn.o_proj.weight.zero_()
        model.layers[0].mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = torch.tensor(logits) * math.sqrt(1 + cfg.rms_norm_eps)  # RMSNorm(ones)
        assert model(torch.tensor([[0, 3, 5]]))[0].tolist() == [pytest.approx(logits, abs=1e-5)] * 3
    for temperature in (0.5, 2.0):
        out = generate(model, [[0]] * 2000, max_new_tokens=5, temperature=temperature, seed=0)
        counts = torch.bincount(torch.tensor(out).flatten(), minlength=6)
        weights = [math.exp(x / temperature) for x in logits]
        expected = [w / sum(weights) for w in weights]
        # binomial standard error at n = 10,000 is at most 0.005; 0.02 is four of them
        assert (counts / 10000).tolist() == pytest.approx(expected, abs=0.02), temperature
    assert generate(model, [[0]], max_new_tokens=3) == [[0, 0, 0]]  # greedy: the largest logit


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.9, "seed": 3}])
def test_static_cache_decoding_gives_the_same_tokens_and_one_graph(sampling):
    """The static-cache step (fixed shapes: the whole cache, masked; the write column a tensor) gives the
    tokens of the growing-cache path, padded rows and early stops included, and compiles to one graph for
    every step: what lets torch.compile(mode="reduce-overhead") capture it as a CUDA graph on a GPU."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    import minitoddler.generate as gen
    torch.manual_seed(0)
    model = ToddlerLM(preset("tiny")).eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    want = generate(model, prompts, 20, stop_ids=[17, 23], **sampling)
    assert generate(model, prompts, 20, stop_ids=[17, 23], static_cache=True, **sampling) == want
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(gen.decode_step, backend="aot_eager", fullgraph=True)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(gen, "decode_step", compiled)
        assert generate(model, prompts, 20, stop_ids=[17, 23], static_cache=True, **sampling) == want
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
