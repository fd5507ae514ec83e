"""The decoder: a Llama-style transformer (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU).

Parameter names are Hugging Face's `LlamaForCausalLM` names without the leading `model.`, so the
checkpoint mapping is a prefix and nothing else. `forward` serves training (causal, no mask), scoring
of right-padded batches (causal is enough: padding sits after every real token) and cached generation
of left-padded batches (`attention_mask` + `cache`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), as F.linear. On CPU with few rows (decoding: a token per sequence) the
    same product taken as weight @ x.T is 1.2-2.3x faster: measured on a 2-core EPYC at 8 rows, F.linear
    reads toddler-155m's weights at 3-7 GB/s and weight @ x.T at 6-9 GB/s; no gain past 32 rows."""
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or rows > 32:
        return F.linear(x, weight, bias)
    y = torch.mm(weight, x.reshape(rows, -1).t()).t().reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies, with Llama-3's frequency-dependent scaling when configured."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rs = cfg.rope_scaling
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        # Wavelengths longer than the original context are slowed by `factor`, short ones are kept,
        # and the band between is interpolated smoothly (Llama 3.1 report, transformers' "llama3").
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    return inv_freq.float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + d/2) of each head's features: the HF Llama ("rotate_half") convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@dataclass
class KVCache:
    """Preallocated keys/values per layer, (B, kv_heads, max_len, head_dim); `length` tokens are filled.
    Zeros, not garbage: a static-cache decode step reads every column (masked), and 0 x NaN would be NaN."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> "KVCache":
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        n = cfg.num_hidden_layers
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, causal: bool, cache: KVCache | None, layer: int,
                cache_position: torch.Tensor | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None and cache_position is not None:  # static: write at these columns, read them all
            cache.k[layer].index_copy_(2, cache_position, k)
            cache.v[layer].index_copy_(2, cache_position, v)
            k, v = cache.k[layer], cache.v[layer]
        elif cache is not None:
            end = cache.length + T
            cache.k[layer][:, :, cache.length:end] = k
            cache.v[layer][:, :, cache.length:end] = v
            k, v = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, causal, cache, layer, cache_position=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, causal, cache, layer, cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


class ToddlerLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rotary()
        self.init_weights()

    @torch.no_grad()
    def init_rotary(self):
        """The rotary cos/sin tables (max positions, head_dim), fp32, on the model's device."""
        device = self.embed_tokens.weight.device
        positions = torch.arange(self.cfg.max_position_embeddings, dtype=torch.float32, device=device)
        angles = torch.outer(positions, rope_inv_freq(self.cfg).to(device))
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos, self.rope_sin = angles.cos(), angles.sin()

    @classmethod
    def empty(cls, cfg: ModelConfig, device) -> "ToddlerLM":
        """A model whose weights are allocated on `device` but not initialised (they are about to be loaded):
        built on the meta device, so neither the host's memory nor a random initialisation is spent."""
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device=device)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.init_rotary()
        return model

    @torch.no_grad()
    def init_weights(self):
        """Normal(0, initializer_range) for matrices; residual outputs (o_proj, down_proj) scaled by
        1/sqrt(2 * layers) so the residual stream's variance does not grow with depth (GPT-2)."""
        std = self.cfg.initializer_range
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.num_hidden_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, hidden_only: bool = False,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> float32 logits (B, T, vocab).

        attention_mask: (B, past + T), 1 for real tokens, 0 for (left) padding; None = no padding. Or a
        boolean (B, T, T) mask, True where token t may see token s, with position_ids: packed rows
        (rl/packing.py), where one row holds several sequences and T may exceed the context.
        position_ids: (B, T); default = past + arange(T), or derived from attention_mask.
        cache: a `KVCache` to read past keys/values from and append this call's to.
        logits_to_keep: > 0 returns the last that many positions' logits only (generation needs the
        last one: the prompt's other logits would cost B * T * vocab * hidden multiply-adds for nothing).
        hidden_only: return the final-norm hidden states (B, T, hidden) instead of logits, in the model's
        dtype (the RL losses apply `lm_head` chunk by chunk; the PPO value head reads them).
        cache_position: one decoded token per row written at this (1,) column of a static `cache`, attending
        to every column where `attention_mask` (B, cache width) is 1; shapes never change from step to
        step, so the step can be captured as a CUDA graph (generate's `static_cache`). Needs position_ids.
        """
        if cache_position is not None:
            return self.static_decode(ids, attention_mask, position_ids, cache, cache_position)
        B, T = ids.shape
        if attention_mask is not None and attention_mask.dim() == 3:
            return self.packed_forward(ids, attention_mask, position_ids, hidden_only)
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence of {past + T} tokens is longer than the model's context of "
                             f"{self.cfg.max_position_embeddings} (max_position_embeddings)")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=ids.device).expand(B, T)
        if attention_mask is None and past and T > 1:  # a chunk after cached tokens: causal from `past` on
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=ids.device)
        mask = None if attention_mask is None else self.attention_bias_mask(attention_mask, T)
        # Without a mask: causal from an empty cache (training, scoring, prefill); one token after cached
        # ones sees them all. A Python bool of `past`, not of T, so that compiling with dynamic lengths
        # keeps one graph (a bool of a symbolic T would break it at every new length).
        causal = mask is None and past == 0
        x = self.decoder(ids, position_ids, mask, causal, cache)
        if cache is not None:
            cache.length += T
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        x = self.norm(x)
        return x if hidden_only else self.lm_head(x).float()

    def decoder(self, ids, position_ids, mask, causal: bool, cache: KVCache | None = None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """Embed, rotate and run every layer: (B, T) ids -> (B, T, hidden) hidden states before the final norm."""
        cos = self.rope_cos[position_ids].unsqueeze(1)  # (B, 1, T, head_dim)
        sin = self.rope_sin[position_ids].unsqueeze(1)
        x = self.embed_tokens(ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, causal, cache, i, cache_position)
        return x

    def packed_forward(self, ids, attention, position_ids, hidden_only: bool) -> torch.Tensor:
        """`forward` with a (B, T, T) boolean mask and the positions each token has in its own sequence."""
        x = self.norm(self.decoder(ids, position_ids, attention[:, None], False))
        return x if hidden_only else self.lm_head(x).float()

    def static_decode(self, ids, attention_mask, position_ids, cache: KVCache, cache_position) -> torch.Tensor:
        """`forward` with `cache_position`: (B, 1) ids -> (B, 1, vocab) logits."""
        mask = attention_mask[:, None, None, :].bool()
        return self.lm_head(self.norm(self.decoder(ids, position_ids, mask, False, cache, cache_position))).float()

    @staticmethod
    def attention_bias_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
        """Boolean (B, 1, T, past + T) mask: causal and not padding. A query row with nothing to attend
        (a padding position before any real token) may attend to everything; its output is never used."""
        S = attention_mask.shape[1]
        q_pos = torch.arange(S - T, S, device=attention_mask.device)[:, None]
        causal = torch.arange(S, device=attention_mask.device)[None, :] <= q_pos   # (T, S)
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        return mask | ~mask.any(-1, keepdim=True)

    # --- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied lm_head is counted once
        return n - self.embed_tokens.weight.numel() if exclude_embeddings else n

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token (PaLM appendix B convention): 2 per weight in every matmul, the
        lm_head included, plus 2 * 2 * seq_len * heads * head_dim per layer for QK^T and AV;
        a backward pass costs twice the forward."""
        c = self.cfg
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul_weights + 4 * c.num_hidden_layers * seq_len * c.num_attention_heads * c.head_dim
        return 3 * forward if training else forward
