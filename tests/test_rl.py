"""GRPO and PPO: the losses, GAE, advantage scaling, KL estimators and controller against hand-computed
values; the shared rollout pieces (formats, masks, chunked log-probs, the LoRA-off reference)."""
import copy
import math

import pytest
import torch

from minitoddler.config import preset
from minitoddler.formats import render_exchange
from minitoddler.logprobs import token_logprobs, token_logprobs_at
from minitoddler.lora import LoraConfig, apply_lora, lora_disabled
from minitoddler.model import ToddlerLM
from minitoddler.rl.grpo import group_advantages, grpo_loss, k3_kl
from minitoddler.rl.ppo import AdaptiveKL, gae, masked_whiten, ppo_loss, token_rewards
from minitoddler.rl.rollout import Rollout, truncate_left
from minitoddler.tokenizer import train_tokenizer


# --- GRPO ------------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 4.0, 4.0])  # three groups of two
    adv, zero = group_advantages(rewards, 2)
    s1, s2 = math.sqrt(0.5), math.sqrt(2.0)  # unbiased std of (1, 2) and (3, 5)
    want = [-0.5 / (s1 + 1e-4), 0.5 / (s1 + 1e-4), -1 / (s2 + 1e-4), 1 / (s2 + 1e-4), 0.0, 0.0]
    assert adv.tolist() == pytest.approx(want, rel=1e-5)
    assert zero == pytest.approx(1 / 3)
    batch_std = float(torch.tensor([1.0, 2, 3, 5, 4, 4]).std())
    adv_b, _ = group_advantages(rewards, 2, "batch")
    assert adv_b.tolist() == pytest.approx([-0.5 / (batch_std + 1e-4), 0.5 / (batch_std + 1e-4),
                                            -1 / (batch_std + 1e-4), 1 / (batch_std + 1e-4), 0, 0], rel=1e-5)
    assert group_advantages(rewards, 2, "none")[0].tolist() == pytest.approx([-0.5, 0.5, -1, 1, 0, 0])


def test_k3_kl_by_hand_nonnegative_and_zero_at_reference():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert k3_kl(lp, ref).item() == pytest.approx(0.25 / 0.5 - math.log(0.25 / 0.5) - 1, rel=1e-6)
    x = torch.randn(1000)
    y = torch.randn(1000)
    assert (k3_kl(x, y) >= 0).all()
    assert k3_kl(x, x).abs().max().item() == 0


def naive_grpo(lp, old, ref, adv, mask, eps, beta, norm, max_new):
    """The GRPO objective written out token by token."""
    rows = []
    total, count = 0.0, 0
    for b in range(len(lp)):
        row_sum, row_n = 0.0, 0
        for t in range(len(lp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            d = ref[b][t] - lp[b][t]
            token = -min(ratio * adv[b], clipped * adv[b]) + beta * (math.exp(d) - d - 1)
            row_sum, row_n = row_sum + token, row_n + 1
        rows.append(row_sum / row_n)
        total, count = total + row_sum, count + row_n
    if norm == "sequence":
        return sum(rows) / len(rows)
    if norm == "token":
        return total / count
    return total / (len(lp) * max_new)


@pytest.mark.parametrize("norm", ["sequence", "token", "dr_grpo"])
def test_grpo_loss_matches_token_by_token(norm):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 4, generator=g) * 2
    old = lp + (torch.rand(3, 4, generator=g) - 0.5)  # ratios on both sides of the clip range
    ref = lp + (torch.rand(3, 4, generator=g) - 0.5)
    adv = torch.tensor([1.5, -0.7, 0.3])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    loss, stats = grpo_loss(lp, old, ref, adv, mask, 0.2, 0.04, norm, max_new_tokens=4)
    want = naive_grpo(lp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04, norm, 4)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    ratio = (lp - old).exp()
    clipped = [((r < 0.8 and a < 0) or (r > 1.2 and a > 0)) for row, a, m in zip(ratio.tolist(), adv.tolist(),
                                                                                  mask.tolist())
               for r, keep in zip(row, m) if keep]
    assert stats["clip_frac"] == pytest.approx(sum(clipped) / len(clipped))


def test_grpo_frozen_policy_ratio_one_and_gradient_is_advantage_weighted():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = grpo_loss(lp, lp.detach(), lp.detach(), torch.tensor([2.0]), torch.ones(1, 2), beta=0.04)
    assert stats["kl"] == 0 and stats["clip_frac"] == 0
    assert loss.item() == pytest.approx(-2.0)  # -ratio * A with ratio 1
    loss.backward()
    assert lp.grad.tolist() == [[-1.0, -1.0]]  # d/dlp of -exp(lp - old) A / 2 tokens = -A/2 each


# --- PPO -------------------------------------------------------------------------------------------
def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])  # the last position is padding: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    a2 = 1 + 0 - 0.7
    a1 = (0 + 0.7 - 0.6) + 0.95 * a2
    a0 = (0 + 0.6 - 0.5) + 0.95 * a1
    assert returns[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], rel=1e-6)
    raw = torch.tensor([a0, a1, a2])
    whitened = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=True) + 1e-8)
    assert adv[0, :3].tolist() == pytest.approx(whitened.tolist(), abs=1e-6)


def test_masked_whiten_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    want = (v - v.mean()) / torch.sqrt(v.var(unbiased=True) + 1e-8)
    out = masked_whiten(x, m)
    assert out[:, :2].flatten().tolist() == pytest.approx(want.tolist(), rel=1e-6)


def test_token_rewards_score_on_last_token_minus_kl():
    lp = torch.tensor([[-1.0, -1.0, -2.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0, 0.0], [-0.5, -1.5, 0.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    r, pen = token_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, kl_coef=0.1)
    assert r.flatten().tolist() == pytest.approx([0.0, 0.0, 2.0 - 0.1 * (-1.0), 0.0, 0.0, -1.0 - 0.1 * 1.0, 0.0, 0.0])
    assert pen.flatten().tolist() == pytest.approx([0, 0, -1.0, 0, 0, 1.0, 0, 0])
    r_abs, _ = token_rewards(torch.zeros(2), lp, ref, mask, 0.1, "abs")
    assert r_abs[0, 2].item() == pytest.approx(-0.1)


def test_ppo_loss_by_hand_and_ratio_threshold():
    lp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    values, old_values = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.1]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, st = ppo_loss(lp, old, values, old_values, adv, returns, torch.ones(1, 2), vf_coef=0.1)
    # ratio 1.5 with A=1: max(-1.5, -1.2) = -1.2 (clipped); ratio 0.5 with A=-1: max(0.5, 0.8) = 0.8 (clipped)
    pg = (-1.2 + 0.8) / 2
    # value 1.0 (old 0.5, clipped to 0.7): max((1-2)^2, (0.7-2)^2) = 1.69; value 0.0 (old 0.1): max(1, 1) = 1
    vf = 0.5 * (1.69 + 1.0) / 2
    assert st["policy_loss"] == pytest.approx(pg) and st["value_loss"] == pytest.approx(vf)
    assert loss.item() == pytest.approx(pg + 0.1 * vf)
    assert st["clip_frac"] == 1.0 and st["vf_clip_frac"] == 0.5
    big = torch.tensor([[math.log(30.0), 0.0]])
    loss, st = ppo_loss(big, old, values, old_values, adv, returns, torch.ones(1, 2))
    assert st["skipped"] == 1.0 and loss.item() == 0.0


def test_adaptive_kl_controller_by_hand():
    kl = AdaptiveKL(0.2, target=6.0, horizon=10000)
    kl.update(12.0, 256)  # error clipped to +0.2
    assert kl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    kl.update(5.4, 100)   # error -0.1
    assert kl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    fixed = AdaptiveKL(0.3, horizon=0)
    fixed.update(100.0, 256)
    assert fixed.value == 0.3


# --- rollout pieces --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return train_tokenizer(["where is the ball?", "ball there", "want more juice", "*mot: hi\n*chi: hi"] * 20,
                           d, vocab_size=300)


def test_render_exchange_masks_the_reply_only(tok):
    ids, mask = render_exchange(tok, "where is the ball?", "ball there", "dialogue", None, bos_id=0)
    assert ids[0] == 0 and mask[0] == 0
    reply = tok.decode([i for i, m in zip(ids, mask) if m])
    assert reply == " ball there\n"
    head, head_mask = render_exchange(tok, "where is the ball?", None, "dialogue", None, bos_id=0)
    assert ids[:len(head)] == head and not any(head_mask)
    assert tok.decode(head[1:]) == "*mot: where is the ball?\n*chi:"
    ids, mask = render_exchange(tok, "where is the ball?", "ball there", "chatml", "Be a child.")
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == "ball there<|im_end|>"


def test_truncate_left_and_rollout_completion_mask():
    assert truncate_left([1, 2, 3, 4, 5], 3) == ([3, 4, 5], 2)
    assert truncate_left([1, 2], 3) == ([1, 2], 0)
    r = Rollout(["a", "b"], [[5, 6, 7], [8]], [[9, 2], [10, 11, 2]], ["x", "y"], [True, True], 0)
    assert r.completion_mask().tolist() == [[1, 1, 0], [1, 1, 1]]  # row b: completion b's tokens


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny")
    return ToddlerLM(cfg)


@pytest.mark.parametrize("remat_above", [0, 2 ** 40])  # chunks recomputed in backward, or kept
def test_chunked_logprobs_equal_unchunked_values_and_gradients(monkeypatch, remat_above):
    monkeypatch.setattr("minitoddler.logprobs.REMAT_ABOVE", remat_above)
    model = tiny_model()
    ids = torch.randint(0, model.cfg.vocab_size, (3, 21))
    hidden = model(ids, hidden_only=True)[:, :-1].reshape(-1, model.cfg.hidden_size)
    a, ent = token_logprobs_at(model.lm_head, hidden, ids[:, 1:].reshape(-1), chunk_size=4)
    b = token_logprobs(model, ids).reshape(-1)
    assert torch.allclose(a, b, atol=1e-5)
    probs = model(ids)[:, :-1].softmax(-1).reshape(-1, model.cfg.vocab_size)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1), atol=1e-4)  # entropy by its definition
    a.sum().backward()
    ga = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    b.sum().backward()
    for x, y in zip(ga, (p.grad for p in model.parameters())):
        assert torch.allclose(x, y, atol=1e-5)
    assert token_logprobs_at(model.lm_head, hidden, ids[:, 1:].reshape(-1), entropy=False)[1] is None


def test_lora_off_reference_equals_base_model():
    base = tiny_model()
    ids = torch.randint(0, base.cfg.vocab_size, (2, 12))
    want = token_logprobs(base, ids).detach()
    policy = copy.deepcopy(base)
    apply_lora(policy, LoraConfig(rank=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)  # a trained adapter: the policy now differs from its base
    with torch.no_grad():
        assert not torch.allclose(token_logprobs(policy, ids), want, atol=1e-3)
        with lora_disabled(policy):
            assert torch.allclose(token_logprobs(policy, ids), want, atol=1e-6)
        assert not torch.allclose(token_logprobs(policy, ids), want, atol=1e-3)  # switched back on


