"""Speed of the model in fp32 and in the `--dtype auto` precision, side by side, and against
transformers' LlamaForCausalLM of the same config and weights.

Measures forward+backward tokens/s at training shapes (batch x seq; fp32 weights, under autocast
when bf16, as training runs) and KV-cache generation tokens/s (a batch of prompts of different
lengths, a fixed number of new tokens; weights in the inference dtype), interleaving every variant
and quoting medians of per-round ratios, since CPU timings drift. Achieved FLOP/s are shown against
the peak of the dtype in use: a measured matmul on CPU (cached per machine), the datasheet bf16
figure on GPU. The CPU's model name and its bf16-relevant flags are printed with the figures.

    python bench.py                      # toddler-155m: fp32 and auto (bf16 on CPUs with avx512_bf16/amx_bf16)
    python bench.py --model tiny --rounds 5 --json
    python bench.py --dtype bf16 --no-hf  # force the bf16 side (e.g. to see it is slower on AVX2-only CPUs)
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from minitoddler.checkpoint import save_model
from minitoddler.cli import parse_config, run
from minitoddler.config import preset
from minitoddler.generate import generate
from minitoddler.model import ToddlerLM
from minitoddler.precision import cpu_flags, cpu_name, device_peak_flops, pick_device, resolve_dtype

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class BenchConfig:
    model: str = "toddler-155m"     # preset name or model directory to time
    batch: int = 4            # training batch (sequences)
    seq: int = 256            # training sequence length
    gen_batch: int = 8        # prompts per generation batch
    new_tokens: int = 64            # tokens generated per prompt
    rounds: int = 3                 # timed repetitions; the best is reported
    device: str = "auto"
    dtype: str = "auto"       # the precision measured beside fp32: auto | bf16 | fp32
    compile: bool = False
    threads: int = 0          # 0 = torch's default
    no_hf: bool = False       # skip transformers' side (half the time)
    json: bool = False              # print the results as one JSON object


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(cfg: BenchConfig):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    chosen = resolve_dtype(cfg.dtype, device)
    precisions = [resolve_dtype("fp32", device)] + ([chosen] if chosen.name != "fp32" else [])
    torch.manual_seed(0)
    ours = ToddlerLM(preset(cfg.model)).to(device)
    theirs = None
    if not cfg.no_hf:
        try:
            from transformers import LlamaForCausalLM
            with tempfile.TemporaryDirectory() as d:
                save_model(ours, d)
                theirs = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).to(device)
        except ImportError:
            pass
    ours_fwd = torch.compile(ours) if cfg.compile else ours
    V, seq = ours.cfg.vocab_size, cfg.seq
    x = torch.randint(0, V, (cfg.batch, seq + 1), device=device)

    def train_step(model, hf, precision):
        with precision.autocast():
            logits = model(x[:, :-1]).logits if hf else model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, V), x[:, 1:].reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 33, (cfg.gen_batch,), generator=gen).tolist()
    prompts = [torch.randint(3, V, (n,), generator=gen).tolist() for n in lengths]
    outputs = {}

    def gen_ours(model, name):
        outputs[name] = generate(model, prompts, cfg.new_tokens)

    def gen_theirs(model):
        width = max(lengths)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=cfg.new_tokens,
                           min_new_tokens=cfg.new_tokens, do_sample=False, pad_token_id=0)

    # Training keeps fp32 weights (autocast); generation runs on a copy in the inference dtype.
    runs = []
    for p in precisions:
        ours_gen = copy.deepcopy(ours).to(p.infer_dtype)
        runs += [(f"train ours {p.name}", lambda p=p: train_step(ours_fwd, False, p)),
                 (f"gen ours {p.name}", lambda m=ours_gen, n=p.name: gen_ours(m, n))]
        if theirs is not None:
            theirs_gen = copy.deepcopy(theirs).to(p.infer_dtype)
            runs += [(f"train hf {p.name}", lambda p=p: train_step(theirs, True, p)),
                     (f"gen hf {p.name}", lambda m=theirs_gen: gen_theirs(m))]
    rows = {name: [] for name, _ in runs}
    for _, fn in runs:  # warm-up: allocators, compilation
        fn()
    load_before = os.getloadavg()[0]
    for _ in range(cfg.rounds):  # interleaved, so drift hits every variant alike
        for name, fn in runs:
            rows[name].append(timed(fn, device))

    result = summarize(cfg, rows, outputs, precisions, chosen, ours, lengths, device, load_before)
    if cfg.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result, cfg, chosen, device)
    return result


def summarize(cfg: BenchConfig, rows: dict, outputs: dict, precisions: list, chosen, ours, lengths: list[int],
              device, load_before: float) -> dict:
    """Medians of the interleaved timings per dtype: tokens/s, share of the peak, ours over HF; the bf16
    speed-up over fp32 and how many greedy rows it leaves identical."""
    seq = cfg.seq
    flags = cpu_flags()
    train_tokens, gen_tokens = cfg.batch * seq, cfg.gen_batch * cfg.new_tokens
    avg_ctx = statistics.mean(lengths) + cfg.new_tokens / 2
    flops = {"train": ours.flops_per_token(seq) * train_tokens,
             "gen": ours.flops_per_token(int(avg_ctx), training=False) * (gen_tokens + sum(lengths))}
    tokens = {"train": train_tokens, "gen": gen_tokens}
    result = {"config": asdict(cfg), "device": str(device), "threads": torch.get_num_threads(),
              "cpu": cpu_name(), "cpu_flags": [f for f in SHOWN_FLAGS if f in flags],
              "auto": str(chosen), "params": ours.num_parameters(),
              "load_average": [load_before, os.getloadavg()[0]], "dtypes": {}}
    for p in precisions:
        peak, peak_src = device_peak_flops(device, p.dtype)
        entry = {"peak_flops": peak, "peak_source": peak_src}
        for kind in ("train", "gen"):
            t_ours = statistics.median(rows[f"{kind} ours {p.name}"])
            r = {"ours_s": t_ours, "ours_tok_s": tokens[kind] / t_ours, "ours_flops_frac": flops[kind] / t_ours / peak}
            hf_times = rows.get(f"{kind} hf {p.name}")
            if hf_times:
                t_hf = statistics.median(hf_times)
                ratios = [o / h for o, h in zip(rows[f"{kind} ours {p.name}"], hf_times)]
                r.update({"hf_s": t_hf, "hf_tok_s": tokens[kind] / t_hf, "hf_flops_frac": flops[kind] / t_hf / peak,
                          "time_ratio_ours_over_hf": statistics.median(ratios)})
            entry[kind] = r
        result["dtypes"][p.name] = entry
    if len(precisions) == 2:
        other = precisions[1].name
        result["speedup_over_fp32"] = {
            kind: statistics.median(a / b for a, b in zip(rows[f"{kind} ours fp32"], rows[f"{kind} ours {other}"]))
            for kind in ("train", "gen")}
        result["same_greedy_rows"] = sum(a == b for a, b in zip(outputs["fp32"], outputs[other]))
    return result


def print_result(result: dict, cfg: BenchConfig, chosen, device) -> None:
    """The table of `summarize`'s result."""
    seq, load_before = cfg.seq, result["load_average"][0]
    print(f"{cfg.model}: {result['params'] / 1e6:.1f}M params on {device}, {result['threads']} threads | "
          f"CPU {result['cpu']}, flags: {' '.join(result['cpu_flags']) or 'none of ' + ' '.join(SHOWN_FLAGS)} | "
          f"load average {load_before:.1f} -> {result['load_average'][1]:.1f}")
    print(f"--dtype {cfg.dtype} = {chosen}")
    for name, e in result["dtypes"].items():
        print(f"peak {name}: {e['peak_flops'] / 1e9:,.0f} GFLOP/s ({e['peak_source']})")
    print(f"{'':28}{'dtype':>6}{'ours tok/s':>12}{'hf tok/s':>12}{'time ours/hf':>14}{'ours % peak':>13}"
          f"{'hf % peak':>11}")
    labels = {"train": f"fwd+bwd {cfg.batch}x{seq}", "gen": f"generate {cfg.gen_batch}x{cfg.new_tokens} (cache)"}
    for kind, label in labels.items():
        for name, e in result["dtypes"].items():
            r = e[kind]
            hf = (f"{r['hf_tok_s']:>12.1f}{r['time_ratio_ours_over_hf']:>14.2f}" if "hf_s" in r
                  else f"{'-':>12}{'-':>14}")
            hf_pct = f"{100 * r['hf_flops_frac']:>10.1f}%" if "hf_s" in r else f"{'-':>11}"
            print(f"{label:28}{name:>6}{r['ours_tok_s']:>12.1f}{hf}{100 * r['ours_flops_frac']:>12.1f}%{hf_pct}")
    if "speedup_over_fp32" in result:
        s = result["speedup_over_fp32"]
        print(f"{list(result['dtypes'])[1]} over fp32 (median of per-round ratios): fwd+bwd {s['train']:.2f}x, "
              f"generation {s['gen']:.2f}x; {result['same_greedy_rows']} of {cfg.gen_batch} greedy rows "
              "identical to fp32's")


if __name__ == "__main__":
    run(main, parse_config(BenchConfig, __doc__))
