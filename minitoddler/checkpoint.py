"""Model directories in the Hugging Face Llama layout, both directions, with errors that say what is wrong.

A directory holds config.json, model.safetensors (HF tensor names), generation_config.json and,
when given, the tokenizer files. `transformers.LlamaForCausalLM.from_pretrained` reads what we write
and we read what it writes (also sharded `model.safetensors.index.json` checkpoints).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig, preset
from .model import ToddlerLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class CheckpointError(ValueError):
    """A model directory that cannot be loaded as it is; the message names the file and the fix."""


def hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over `path`, so a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: ToddlerLM, directory: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write `model` (and the tokenizer files from the directory `tokenizer`, if given) as an HF model dir."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    tensors = {hf_name(k): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
               if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    atomic_write(directory / "model.safetensors",
                 lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(directory / "config.json", cfg.save)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    atomic_write(directory / "generation_config.json", lambda p: p.write_text(json.dumps(gen, indent=2) + "\n"))
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        if not (tokenizer / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{tokenizer / 'tokenizer.json'} not found: pass the directory that holds "
                                    "the tokenizer files")
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file() and tokenizer.resolve() != directory.resolve():
                shutil.copyfile(tokenizer / name, directory / name)
    return directory


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        hint = " (PyTorch .bin weights are not read: they are pickles; convert them to safetensors)" \
            if any(directory.glob("*.bin")) else ""
        raise CheckpointError(f"{single} not found: a model directory needs model.safetensors{hint}")
    tensors = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors file, truncated or corrupt? ({e})") from None
    return tensors


def load_state(model: ToddlerLM, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy HF-named tensors into `model`, naming every missing, unexpected or misshapen tensor."""
    cfg = model.cfg
    expected = {hf_name(k): v for k, v in model.state_dict().items()}
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    # Old checkpoints carry the rotary table; it is recomputed from the config.
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for k in sorted(set(expected) & set(tensors)):
        if tuple(tensors[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(tensors[k].shape)} but the config needs "
                            f"{tuple(expected[k].shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match its config.json:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for k, v in expected.items():
            if k in tensors and not (k == "lm_head.weight" and cfg.tie_word_embeddings):
                v.copy_(tensors[k])


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> ToddlerLM:
    """A `ToddlerLM` from an HF Llama-layout directory (ours, transformers', SmolLM2, Llama-3.x)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} not found")
    try:
        cfg = ModelConfig.load(directory / "config.json")
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    tensors = read_safetensors(directory)
    model = ToddlerLM.empty(cfg, device)
    load_state(model, tensors, str(directory))
    return model.to(dtype=dtype)


def model_from_arg(spec: str, device="cpu") -> ToddlerLM:
    """`--model` flag: a directory to load, or a preset name for a freshly initialised model."""
    return load_model(spec, device) if Path(spec).is_dir() else ToddlerLM(preset(spec)).to(device)
