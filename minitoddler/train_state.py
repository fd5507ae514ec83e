"""Training state beside the model: optimizer, RNG and whatever a loop needs to continue (data position,
a KL controller, a value head), saved atomically as one directory and restored exactly on --resume.
The model itself goes in the HF layout (checkpoint.py), so a checkpoint is also a loadable model."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .checkpoint import load_state, read_safetensors, save_model


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process' generators: torch's CPU one, the CUDA one of its own device (only when this process
    has used CUDA: a --device cpu run on a GPU machine must not initialise it), Python's and numpy's."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore `rng_state`'s generators (the CUDA one into this process' current device, if it has one)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"], torch.cuda.current_device())
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def gather_rng_states() -> tuple[dict[str, torch.Tensor], list[dict]] | None:
    """Every process' `rng_state`, on the main process as flat tensors `rank{r}.{name}` and a list of
    metas (one per rank); None on the others. A collective under torchrun: every process calls it."""
    mine = rng_state()
    if dist.is_initialized():
        everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(mine, everyone, dst=0)
        if dist.get_rank() != 0:
            return None
    else:
        everyone = [mine]
    tensors = {f"rank{r}.{k}": v for r, (t, _) in enumerate(everyone) for k, v in t.items()}
    return tensors, [meta for _, meta in everyone]


def restore_rng_states(tensors: dict[str, torch.Tensor], metas: list[dict] | dict) -> None:
    """This process' generators from `gather_rng_states`' files (rank r takes rank r's; a run resumed on
    more processes than it was saved from reuses them round-robin). Older single-process files too."""
    if "torch_cpu" in tensors:  # saved before generators were kept per process
        return set_rng_state({k: v for k, v in tensors.items() if k == "torch_cpu"}, metas)
    rank = dist.get_rank() if dist.is_initialized() else 0
    rank %= len(metas)
    prefix = f"rank{rank}."
    set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, metas[rank])


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as flat named tensors (for safetensors) plus JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {f"{idx}.{name}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for idx, state in sd["state"].items() for name, v in state.items()}
    return tensors, sd["param_groups"]


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list):
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for g in groups:
        g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: str | Path, model, optimizer, step: int, extra: dict,
                    tokenizer: str | Path | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path | None:
    """Write model (HF layout), optimizer, every process' RNG, `extra` (JSON: data position, config, a
    KL controller, ...) and `extra_tensors` (a value head, ...; in extra.safetensors) to `directory`,
    atomically as a whole: everything goes to a temporary directory which then replaces the old
    one, so a crash at any moment leaves one complete checkpoint. Under torchrun every process calls
    it (their RNG states are gathered); the main one writes and returns the directory, the others None."""
    gathered = gather_rng_states()
    if gathered is None:
        return None
    rng_tensors, rng_meta = gathered
    final = Path(directory)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer=tokenizer)
    opt_tensors, groups = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    if extra_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()},
                  str(tmp / "extra.safetensors"))
    state = {"step": step, "param_groups": groups, "rng": rng_meta, **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(state) + "\n")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint to resume from; `.old` if a crash hit between the two renames of a save."""
    final = Path(directory)
    old = final.with_name(final.name + ".old")
    for d in (final, old):
        if (d / "trainer_state.json").is_file():
            return d
    return None


def load_checkpoint(directory: str | Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG from `save_checkpoint`'s directory; returns its state dict
    (step, data position and whatever else the loop saved), with the extra tensors as
    state["tensors"] ({} if none)."""
    directory = Path(directory)
    state = json.loads((directory / "trainer_state.json").read_text())
    load_state(model, read_safetensors(directory), str(directory))
    optimizer_from_flat(optimizer, load_file(str(directory / "optimizer.safetensors")), state["param_groups"])
    restore_rng_states(load_file(str(directory / "rng.safetensors")), state["rng"])
    extra = directory / "extra.safetensors"
    state["tensors"] = load_file(str(extra)) if extra.is_file() else {}
    return state


def resume_checkpoint(ckpt_dir: str | Path, model, optimizer, setup: dict | None = None,
                      is_main: bool = True) -> dict:
    """--resume: load the checkpoint in `ckpt_dir` (or its `.old` twin) into model, optimizer and RNG.
    `setup` (data, stages, settings that fix the schedule) must equal what the checkpoint saved as
    state["setup"]: resuming a different run would silently train something else."""
    found = find_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start")
    if setup is not None:
        saved = json.loads((found / "trainer_state.json").read_text()).get("setup") or {}
        changed = {k: (saved.get(k), v) for k, v in setup.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"--resume: this run's data, stages or settings differ from the checkpoint's in "
                             f"{found}: " + "; ".join(f"{k}: was {a}, now {b}" for k, (a, b) in changed.items()))
    state = load_checkpoint(found, model, optimizer)
    if is_main:
        print(f"resumed from {found} at step {state['step']}")
    return state
