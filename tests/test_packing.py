"""Each caregiver line computed once (issue 26): the packed layout (a prompt once, its completions after it,
no padding) gives the per-row log-probs, losses and gradients; prefill-once rollouts give the same tokens
as every row decoded alone; the rows of a group draw their first tokens independently; finished rows leave
the decode batch."""
import pytest
import torch

from minitoddler.config import preset
from minitoddler.generate import generate
from minitoddler.logprobs import token_logprobs
from minitoddler.lora import LoraConfig, apply_lora
from minitoddler.model import ToddlerLM
from minitoddler.rl.dpo import dpo_loss, pair_logprobs, reply_logprobs
from minitoddler.rl.grpo import grpo_loss
from minitoddler.rl.packing import pack, packed_logprobs
from minitoddler.rl.ppo import ValueHead, ppo_loss


def tiny(seed=0, lora=False):
    torch.manual_seed(seed)
    model = ToddlerLM(preset("tiny"))
    if lora:
        apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.3)  # a trained adapter, so that it changes the outputs
    return model


def batch(vocab, seed=1):
    """Three prompts of different lengths, two or three completions each (one of a single token), and a
    prompt that appears twice apart from its group (it must share their row)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (7, 3, 11)]
    lengths = [[5, 1, 9], [4, 6], [2, 8, 3]]
    rows = [(p, torch.randint(3, vocab, (n,), generator=g).tolist()) for p, ls in zip(prompts, lengths) for n in ls]
    rows.append((prompts[0], torch.randint(3, vocab, (6,), generator=g).tolist()))
    return [p for p, _ in rows], [c for _, c in rows]


def per_row(model, prompts, completions, head=None):
    """Each prompt + completion alone through the plain scoring pass: (B, L) log-probs (and values), zeros
    outside the completions."""
    L = max(map(len, completions))
    lps, values = [], []
    for p, c in zip(prompts, completions):
        ids = torch.tensor([p + c])
        lp = token_logprobs(model, ids)[0, len(p) - 1:]
        lps.append(torch.cat((lp, lp.new_zeros(L - len(c)))))
        if head is not None:
            hidden = model(ids, hidden_only=True)[0, len(p) - 1:-1]
            v = head(hidden)
            values.append(torch.cat((v, v.new_zeros(L - len(c)))))
    return torch.stack(lps), (torch.stack(values) if head is not None else None)


def completion_mask(completions):
    L = max(map(len, completions))
    return torch.tensor([[1] * len(c) + [0] * (L - len(c)) for c in completions])


def test_pack_layout_by_hand():
    p = pack([[1, 2, 3], [4], [1, 2, 3]], [[5, 6], [7, 8, 9], [10]], pad_id=0)
    assert p.ids.tolist() == [[1, 2, 3, 5, 6, 10], [4, 7, 8, 9, 0, 0]]
    assert p.positions.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 0, 0]]
    assert p.targets.tolist() == [5, 6, 10, 7, 8, 9]  # row by row
    # predicted by: the prompt's last token (col 2), then 5 (col 3); the prompt again; 4 (row 1 col 0), 7, 8
    assert p.source.tolist() == [2, 3, 2, 6, 7, 8]
    assert p.where.tolist() == [0, 1, 6, 3, 4, 5]  # in the (B=3, width=3) completion layout
    seen = p.attention[0].int().tolist()
    assert seen[5] == [1, 1, 1, 0, 0, 1]  # the second completion of row 0 sees the prompt and itself only
    assert seen[4] == [1, 1, 1, 1, 1, 0]
    assert p.unpack(torch.arange(1.0, 7.0)).tolist() == [[1, 2, 0], [4, 5, 6], [3, 0, 0]]


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_grpo_and_ppo_equal_per_row_losses_and_gradients(lora):
    model = tiny(lora=lora)
    prompts, completions = batch(model.cfg.vocab_size)
    mask = completion_mask(completions)
    B = len(prompts)
    torch.manual_seed(3)
    adv, old, ref = torch.randn(B), torch.randn(B, mask.shape[1]) * 0.1 - 8, torch.randn(B, mask.shape[1]) * 0.1 - 8
    head = ValueHead(model.cfg.hidden_size, dropout=0.0)
    trained = [p for p in model.parameters() if p.requires_grad]
    packed = pack(prompts, completions)

    def same_gradients(loss_packed, loss_per_row, params):
        a, b = torch.autograd.grad(loss_packed, params), torch.autograd.grad(loss_per_row, params)
        assert any(x.abs().sum() > 0 for x in a)
        return all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(a, b))

    for norm in ("sequence", "token"):
        lp, ent, values = packed_logprobs(model, packed, chunk_size=5, head=head)
        want_lp, want_values = per_row(model, prompts, completions, head)
        assert torch.allclose(lp, want_lp, atol=1e-5) and torch.allclose(values, want_values, atol=1e-5)
        assert (ent[mask == 0] == 0).all() and (ent[mask == 1] > 0).all()
        assert same_gradients(grpo_loss(lp, old, ref, adv, mask, norm=norm)[0],
                              grpo_loss(want_lp, old, ref, adv, mask, norm=norm)[0], trained)
    returns, old_values, adv_t = (torch.randn(B, mask.shape[1]) for _ in range(3))
    lp, _, values = packed_logprobs(model, packed, chunk_size=5, head=head)
    want_lp, want_values = per_row(model, prompts, completions, head)
    assert same_gradients(ppo_loss(lp, old, values, old_values, adv_t, returns, mask, ratio_threshold=1e9)[0],
                          ppo_loss(want_lp, old, want_values, old_values, adv_t, returns, mask,
                                   ratio_threshold=1e9)[0], trained + list(head.parameters()))


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_dpo_equals_per_row_loss_and_gradients(lora):
    model = tiny(lora=lora)
    prompts, replies = batch(model.cfg.vocab_size)
    chosen = [(p + c, [0] * len(p) + [1] * len(c)) for p, c in zip(prompts[:4], replies[:4])]
    rejected = [(p + c, [0] * len(p) + [1] * len(c)) for p, c in zip(prompts[:4], replies[4:8])]
    ref_c, ref_r = torch.randn(4) - 20, torch.randn(4) - 20
    trained = [p for p in model.parameters() if p.requires_grad]
    for loss_type in ("sigmoid", "ipo"):
        c, r = pair_logprobs(model, chosen, rejected, loss_type, chunk_size=3)
        a = torch.autograd.grad(dpo_loss(c, r, ref_c, ref_r, 0.1, loss_type)[0].sum(), trained)
        lp_c, _ = per_row(model, prompts[:4], replies[:4])
        lp_r, _ = per_row(model, prompts[:4], replies[4:8])
        want_c = reply_logprobs(lp_c, completion_mask(replies[:4]), loss_type)
        want_r = reply_logprobs(lp_r, completion_mask(replies[4:8]), loss_type)
        assert torch.allclose(c, want_c, atol=1e-4) and torch.allclose(r, want_r, atol=1e-4)
        b = torch.autograd.grad(dpo_loss(want_c, want_r, ref_c, ref_r, 0.1, loss_type)[0].sum(), trained)
        assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(a, b))


def test_a_packed_row_longer_than_the_context_is_fine_but_a_sequence_is_not():
    model = tiny()
    ctx = model.cfg.max_position_embeddings
    prompt, long = [5] * (ctx // 2), [[7] * (ctx // 2)] * 3  # 2x the context in one row, each sequence fits
    lp = packed_logprobs(model, pack([prompt] * 3, long))[0]
    assert lp.shape == (3, ctx // 2) and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        packed_logprobs(model, pack([prompt], [[7] * (ctx // 2 + 1)]))


def greedy_alone(model, prompt, max_new, stops):
    """Greedy decoding by re-running the whole sequence at every token: no cache, no batch."""
    ids = list(prompt)
    for _ in range(max_new):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(token)
        if token in stops:
            break
    return ids[len(prompt):]


def test_prefill_once_greedy_rollouts_equal_each_row_alone():
    model = tiny().eval()
    prompts = [[11, 12, 13, 14, 15], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37]]
    with torch.no_grad():
        free = [greedy_alone(model, p, 12, set()) for p in prompts]
        stops = {free[0][3], free[1][6]}  # rows then finish at different steps: the batch shrinks mid-way
        want = [greedy_alone(model, p, 12, stops) for p in prompts]
    got = generate(model, prompts, 12, stop_ids=stops, copies=3)
    assert got == [w for w in want for _ in range(3)]
    assert len({len(w) for w in want}) > 1


def test_finished_rows_leave_the_decode_batch():
    model = tiny().eval()
    prompts = [[11, 12, 13], [20, 21, 22, 23]]
    with torch.no_grad():
        stop = greedy_alone(model, prompts[0], 10, set())[2]
    rows = []
    hook = model.embed_tokens.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    got = generate(model, prompts, 10, stop_ids=[stop], copies=2)
    hook.remove()
    assert rows[0] == 2  # the prefill: each prompt once
    # decode step k runs the rows whose completion is longer than k tokens, and nothing else
    assert rows[1:] == [sum(len(c) > k for c in got) for k in range(1, len(rows))]
    assert min(rows[1:]) < 4 and max(map(len, got)) == 10


def test_rows_of_a_group_draw_their_first_tokens_independently():
    """Pairs of rows in one group share their first token as often as two independent draws would:
    sum(p_i^2) of the first-token distribution (a shared first token would make it 1)."""
    model = tiny(seed=4).eval()
    temperature = 0.1  # peaked enough that chance agreements are common (~0.4) and measurable
    prompts = [[40 + i, 50, 60 + i] for i in range(16)]
    G, trials = 8, 6
    with torch.no_grad():
        probs = (model(torch.tensor(prompts))[:, -1] / temperature).softmax(-1)
    chance = float((probs ** 2).sum(-1).mean())
    same = total = 0
    for t in range(trials):
        out = generate(model, prompts, 1, temperature=temperature, seed=t, copies=G)
        firsts = torch.tensor([c[0] for c in out]).view(len(prompts), G)
        eq = (firsts[:, :, None] == firsts[:, None, :]).float()
        same += float((eq.sum() - eq.diagonal(dim1=1, dim2=2).sum()) / 2)
        total += len(prompts) * G * (G - 1) / 2
    rate = same / total
    assert 0.05 < chance < 0.9
    assert abs(rate - chance) < 0.08, (rate, chance)
