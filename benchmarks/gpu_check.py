"""What a GPU run of minitoddler looks like, in one short script (a few minutes on one GPU):

1. attention: which SDPA kernels (flash, memory-efficient, cuDNN, math) run at the model's shapes, and
   their time;
2. pretraining: eager vs compiled steps at two device batches (tokens/s, MFU, peak memory) and a profiler
   trace of one compiled step (<out>/trace_pretrain.json);
3. decoding: ms per token at 200 rows x 96 new tokens, eager growing cache vs the static cache captured as
   a CUDA graph, and whether both give the same tokens;
4. GRPO: three compiled steps of train_rl.py on random weights, with the graph breaks and recompilations.

    python benchmarks/gpu_check.py                          # toddler-155m on cuda
    python benchmarks/gpu_check.py --device cpu --model tiny --quick   # the script itself, on a CPU

Numbers print as they come and land in <out>/gpu_check.json.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_pretrain  # noqa: E402
import train_rl  # noqa: E402
from minitoddler.checkpoint import save_model  # noqa: E402
from minitoddler.cli import parse_config, run  # noqa: E402
from minitoddler.config import preset  # noqa: E402
from minitoddler.generate import generate  # noqa: E402
from minitoddler.model import ToddlerLM  # noqa: E402
from minitoddler.precision import device_peak_flops, pick_device, resolve_dtype  # noqa: E402
from minitoddler.rewards.length import LengthModel  # noqa: E402
from minitoddler.startup import bundled_data  # noqa: E402
from minitoddler.tokenizer import train_tokenizer  # noqa: E402


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class CheckConfig:
    model: str = "toddler-155m"    # preset (random weights)
    device: str = "auto"
    out: str = "runs/gpu_check"
    batches: str = "16,32"         # device batches of the pretraining comparison
    decode_rows: int = 200         # rows decoded together (Toddler-LLM-GRPO: 25 prompts x 8)
    decode_tokens: int = 96
    quick: bool = False            # a few steps of everything (checks the script, measures nothing)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def attention_kernels(cfg, device, dtype) -> dict:
    """Seconds per call of each SDPA backend at the model's shapes (B 16, context, GQA), or why it refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(16, cfg.num_attention_heads, cfg.max_position_embeddings, cfg.head_dim, device=device, dtype=dtype)
    kv = torch.randn(16, cfg.num_key_value_heads, cfg.max_position_embeddings, cfg.head_dim, device=device, dtype=dtype)
    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                out[backend.name] = timed(lambda: F.scaled_dot_product_attention(
                    q, kv, kv, is_causal=True, enable_gqa=True), device, 5)
        except RuntimeError as e:
            out[backend.name] = f"refused: {str(e).splitlines()[0][:120]}"
    return out


def pretraining(cfg, device, precision, batch: int, compiled: bool, steps: int, trace: Path | None) -> dict:
    """Tokens/s, MFU and peak memory of full pretraining steps (forward, loss, backward, AdamW)."""
    torch.manual_seed(0)
    model = ToddlerLM(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.max_position_embeddings + 1), device=device)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    loss_fn = torch.compile(train_pretrain.next_token_loss, backend=backend) if compiled \
        else train_pretrain.next_token_loss

    def step():
        loss_fn(model, x[:, :-1], x[:, 1:], precision).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, steps)
    tokens = batch * cfg.max_position_embeddings
    peak, source = device_peak_flops(device, precision.dtype)
    result = {"tok_s": tokens / seconds, "mfu": model.flops_per_token(cfg.max_position_embeddings) * tokens
              / seconds / peak, "peak": source,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
    if trace is not None:
        with torch.profiler.profile() as prof:
            step()
            sync(device)
        prof.export_chrome_trace(str(trace))
        result["trace"] = str(trace)
    return result


def decoding(cfg, device, dtype, rows: int, tokens: int) -> dict:
    """ms per token of the growing-cache decode and of the static cache (a CUDA graph on a GPU)."""
    torch.manual_seed(0)
    model = ToddlerLM(cfg).to(device=device, dtype=dtype).eval()
    prompts = [torch.randint(3, cfg.vocab_size, (int(n),)).tolist() for n in torch.randint(20, 60, (rows,))]
    graphs = device.type == "cuda"
    eager = timed(lambda: generate(model, prompts, tokens), device, 2)
    static = timed(lambda: generate(model, prompts, tokens, static_cache=True, compile_decode=graphs), device, 2)
    same = generate(model, prompts, tokens) == generate(model, prompts, tokens, static_cache=True,
                                                        compile_decode=graphs)
    return {"eager_ms_per_token": 1e3 * eager / tokens, "static_ms_per_token": 1e3 * static / tokens,
            "cuda_graph": graphs, "same_tokens": same}


def grpo_steps(cfg, device, out: Path, quick: bool) -> dict:
    """Three compiled GRPO steps on random weights; the graph breaks and graphs compiled meanwhile (--quick on
    a CPU runs them eager: compiling there costs minutes)."""
    from torch._dynamo.utils import counters
    pairs = bundled_data(out / "data", "pairs")
    rows = [json.loads(line) for line in (pairs / "train.jsonl").read_text().splitlines()]
    train_tokenizer([t for r in rows for t in (r["prompt"], r["response"])], out / "tokenizer",
                    vocab_size=min(cfg.vocab_size, 2048))
    model_dir = save_model(ToddlerLM(cfg), out / "model", tokenizer=out / "tokenizer")
    LengthModel.fit([len(r["response"].split()) for r in rows], "pmf").save(out / "length.json")
    counters.clear()
    t = time.perf_counter()
    rl = train_rl.rl_config(model=str(model_dir), data=str(pairs), out=str(out / "grpo"), steps=3,
                            batch_prompts=4 if quick else 25, generations=2 if quick else 8,
                            max_new_tokens=8 if quick else 96, format="dialogue", lora_rank=16,
                            compile=device.type == "cuda" or not quick,
                            device=str(device), eval_prompts=0, sample_every=0, save_every=0)
    train_rl.main(rl, "length", {"length_fit": str(out / "length.json")})
    return {"seconds": time.perf_counter() - t, "graph_breaks": dict(counters["graph_break"]),
            "graphs": counters["stats"]["unique_graphs"]}


def main(check: CheckConfig) -> dict:
    device = pick_device(check.device)
    out = Path(check.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset(check.model)
    precision = resolve_dtype("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {"device": name, "model": check.model, "dtype": str(precision), "config": asdict(check)}
    print(f"{name} | {check.model} | {precision}", flush=True)
    report["attention"] = attention_kernels(cfg, device, precision.dtype)
    print("attention:", json.dumps(report["attention"]), flush=True)
    steps = 2 if check.quick else 10
    for batch in (int(b) for b in check.batches.split(",")):
        for compiled in (False, True):
            key = f"pretrain_b{batch}_{'compiled' if compiled else 'eager'}"
            trace = out / "trace_pretrain.json" if compiled and batch == int(check.batches.split(",")[0]) else None
            report[key] = pretraining(cfg, device, precision, batch, compiled, steps, trace)
            print(f"{key}:", json.dumps(report[key]), flush=True)
    rows, tokens = (8, 8) if check.quick else (check.decode_rows, check.decode_tokens)
    report["decode"] = decoding(cfg, device, precision.infer_dtype, rows, tokens)
    print("decode:", json.dumps(report["decode"]), flush=True)
    report["grpo"] = grpo_steps(cfg, device, out, check.quick)
    print("grpo:", json.dumps(report["grpo"]), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    run(main, parse_config(CheckConfig, __doc__))
