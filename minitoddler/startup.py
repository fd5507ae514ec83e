"""A training script's start-up and close in a few calls: DDP, device, run directory and seed; printing on
the main process only; the bundled corpus when no --data is given; the ChatML tokens; LoRA from the
--lora-* flags; the banner that says what this run trains; and the process group's end."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .chatml import add_chat_tokens
from .data.prepare import PrepareConfig, prepare
from .distributed import Dist, init_distributed
from .lora import LoraConfig, apply_lora, parse_targets


def start_run(device: str, out: str | Path, seed: int) -> tuple[Dist, torch.device, Path]:
    """What every script does first: DDP (under torchrun) and the device, the run directory, the seed."""
    ddp, dev = init_distributed(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return ddp, dev, out


def written(out: Path, lora: LoraConfig | None) -> str:
    """The closing line's list of outputs: the final model, the adapter (with LoRA), the metrics."""
    adapter = f" | adapter: {out / 'adapter'}" if lora else ""
    return f"model: {out / 'final'}{adapter} | metrics: {out / 'metrics.jsonl'}"


def end_run() -> None:
    """What every script does last: leave the process group (under torchrun), together: the others wait
    until the main process has written its last files, so that no process tears gloo down while a peer
    still works (a process leaving early can abort at exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print() on the main process only (every process runs the script under torchrun)."""
    if is_main():
        print(*args, **kwargs)


def require_model_dir(path: str, what: str, hint: str = "") -> Path:
    """--model as a directory, or a one-line error saying what it must be and how to get one."""
    if not path or not Path(path).is_dir():
        raise SystemExit(f"error: --model DIR is required: {what}{f' ({path} is not one)' if path else ''}"
                         f"{f'; {hint}' if hint else ''}")
    return Path(path)


def bundled_data(data_dir: Path, kind: str) -> Path:
    """The bundled corpus prepared (once, by the main process; the others wait) under data_dir; returns
    its `kind` directory: pairs, prefs, cds or triplets."""
    if is_main() and not (data_dir / kind / "train.jsonl").is_file():
        prepare(PrepareConfig(out=data_dir, val_frac=0.1, test_frac=0.1, workers=1))
        print(f"prepared the bundled corpus into {data_dir}")
    if dist.is_initialized():
        dist.barrier()
    return data_dir / kind


def chat_tokens(model, tokenizer_dir: str, out: Path, system_prompt: str) -> tuple[Path, list[str]]:
    """Give `model` and its tokenizer the ChatML tokens if they lack them (chatml.add_chat_tokens): the
    main process writes the tokenizer to <out>/tokenizer, the others wait for it. Returns that directory
    and the tokens added."""
    added = add_chat_tokens(model, tokenizer_dir, out / "tokenizer" if is_main() else None, system_prompt)
    if dist.is_initialized():
        dist.barrier()
    return out / "tokenizer", added


def lora_from_flags(model, cfg, alpha_per_rank: float) -> LoraConfig | None:
    """Apply LoRA as `cfg.lora_rank`, `lora_alpha` (0 = alpha_per_rank x rank), `lora_dropout` and
    `lora_targets` say; None (full fine-tuning) when the rank is 0."""
    if not cfg.lora_rank:
        return None
    lora = LoraConfig(cfg.lora_rank, cfg.lora_alpha or alpha_per_rank * cfg.lora_rank, cfg.lora_dropout,
                      parse_targets(cfg.lora_targets))
    apply_lora(model, lora)
    return lora


def describe_run(name: str, model_arg: str, model, lora: LoraConfig | None, *parts: str,
                 trained: int | None = None) -> str:
    """The banner: `name | model M: N parameters, n trained (LoRA rank r | full fine-tuning) | parts…`.
    `trained` counts extra trainable parameters (a value head) when given; else the model's own."""
    if trained is None:
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    how = f"LoRA rank {lora.rank}" if lora else "full fine-tuning"
    head = (f"model {model_arg}: {model.num_parameters() / 1e6:.1f}M parameters, {trained / 1e6:.2f}M trained "
            f"({how})")
    return " | ".join([name, head, *parts])
