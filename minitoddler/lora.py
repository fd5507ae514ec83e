"""LoRA: low-rank adapters on the model's linear layers (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

A wrapped layer computes  y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank  with the base W frozen,
A (rank x in) random and B (out x rank) zero, so training starts exactly at the base model. Any
(out, in) shape works, including GQA's narrow k/v projections. `merge_lora` folds B A into W and
puts plain nn.Linear layers back, so the merged model saves like any other checkpoint; the adapter
alone (A, B and the settings) saves as `adapter_model.safetensors` + `adapter_config.json`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .model import Linear, linear

# Short target names (as on the command line) -> the HF Llama module names they select.
TARGET_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                  "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = tuple(TARGET_MODULES)  # short names, see TARGET_MODULES

    def __post_init__(self):
        self.targets = parse_targets(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def parse_targets(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'q,k,v' or ('q_proj', 'v') -> ('q', 'k', 'v'); unknown names are an error listing the valid ones."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    short = {v: k for k, v in TARGET_MODULES.items()}
    out = []
    for name in (n.strip() for n in names):
        key = short.get(name, name)
        if key not in TARGET_MODULES:
            raise ValueError(f"unknown LoRA target {name!r}; choose from {', '.join(TARGET_MODULES)}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("LoRA needs at least one target module")
    return tuple(out)


class LoRALinear(nn.Module):
    """nn.Linear with a frozen base weight plus a trainable low-rank update. Keeps the base's
    parameter names (`weight`, `bias`) so the surrounding state-dict keys do not change."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear (and PEFT) use for A
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.enabled = True  # False: the base layer alone (see `lora_disabled`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return linear(x, self.weight, self.bias) + update * self.scaling

    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return (self.weight.float() + delta).to(self.weight.dtype)


def _targets_in(model: nn.Module, cfg: LoraConfig) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, full name) of every nn.Linear whose attribute name is a target."""
    wanted = {TARGET_MODULES[t] for t in cfg.targets}
    found = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if attr in wanted and isinstance(child, nn.Linear):
                found.append((parent, attr, f"{parent_name}.{attr}" if parent_name else attr))
    return found


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze every parameter of `model`, wrap the target linears in LoRALinear (in place), return their names."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA adapters; merge_lora() them first")
    for p in model.parameters():
        p.requires_grad_(False)
    found = _targets_in(model, cfg)
    if not found:
        raise ValueError(f"no nn.Linear named {sorted(TARGET_MODULES[t] for t in cfg.targets)} in the model")
    for parent, attr, _ in found:
        setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.rank, cfg.alpha, cfg.dropout))
    return [name for _, _, name in found]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain nn.Linear back (in place); returns model."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                plain = Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    plain.weight.copy_(child.merged_weight())
                    if child.bias is not None:
                        plain.bias.copy_(child.bias)
                setattr(parent, attr, plain)
    return model


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run `model` as its base model: every LoRA update switched off inside the block. The RL reference
    policy is the policy with its adapters off, so no second copy of the weights is needed."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed `{module}.lora_A` / `{module}.lora_B`."""
    return {k: v.detach() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def save_adapter(model: nn.Module, cfg: LoraConfig, out_dir: str | Path) -> Path:
    """Write adapter_model.safetensors + adapter_config.json into out_dir (atomically); returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise ValueError("model has no LoRA adapters to save")
    tmp = out_dir / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / ADAPTER_WEIGHTS)
    tmp = out_dir / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps({**asdict(cfg), "targets": list(cfg.targets)}, indent=2) + "\n")
    os.replace(tmp, out_dir / ADAPTER_CONFIG)
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoraConfig:
    """Wrap `model` as the saved adapter describes and load its tensors; names and shapes must match exactly."""
    adapter_dir = Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir / name} not found: an adapter directory is written by "
                                    "save_adapter() (train_sft.py --lora-rank N puts one in <out>/adapter)")
    raw = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    try:
        cfg = LoraConfig(rank=int(raw["rank"]), alpha=float(raw["alpha"]), dropout=float(raw["dropout"]),
                         targets=tuple(raw["targets"]))
    except KeyError as e:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: missing key {e}") from None
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    expected = {}
    for parent, attr, name in _targets_in(model, cfg):
        linear = getattr(parent, attr)
        expected[f"{name}.lora_A"] = (cfg.rank, linear.in_features)
        expected[f"{name}.lora_B"] = (linear.out_features, cfg.rank)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS} does not fit this model: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: {key} has shape {tuple(tensors[key].shape)}, "
                             f"this model needs {shape} (different base model or rank?)")
    apply_lora(model, cfg)
    model.load_state_dict(tensors, strict=False)
    return cfg
