"""--dtype: what `auto` picks on CPUs with and without native bf16, and that bf16 computes what fp32
computes, within stated tolerances, on a briefly trained small model (forced bf16 runs everywhere:
emulated, slower, on CPUs without avx512_bf16/amx_bf16)."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import train_pretrain
from minitoddler import precision
from minitoddler.checkpoint import load_model
from minitoddler.data.shards import TokenLoader, default_shards
from minitoddler.evals.minimal_pairs import encode, evaluate_pairs, first_per_paradigm, load_pairs
from minitoddler.logprobs import sequence_logprobs
from minitoddler.tokenizer import load_tokenizer
from minitoddler.precision import cpu_flags, device_peak_flops, pick_device, resolve_dtype

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}           # e.g. an older EPYC: no native bf16
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}     # this workplace's newer EPYC
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}                 # Sapphire Rapids and later


def test_auto_picks_bf16_only_where_the_cpu_computes_it_natively():
    plain = resolve_dtype("auto", "cpu", flags=AVX2_ONLY)
    assert plain.name == "fp32" and plain.dtype == torch.float32 and "lacks avx512_bf16/amx_bf16" in plain.reason
    for flags, flag in ((AVX512_BF16, "avx512_bf16"), (AMX, "amx_bf16")):
        p = resolve_dtype("auto", "cpu", flags=flags)
        assert p.name == "bf16" and p.infer_dtype == torch.bfloat16 and flag in p.reason
    # Asked for explicitly, either precision is used whatever the CPU; forced bf16 says it will be slow.
    assert resolve_dtype("fp32", "cpu", flags=AVX512_BF16).name == "fp32"
    forced = resolve_dtype("bf16", "cpu", flags=AVX2_ONLY)
    assert forced.name == "bf16" and "slower" in forced.reason
    assert "slower" not in resolve_dtype("bf16", "cpu", flags=AVX512_BF16).reason
    with pytest.raises(ValueError, match="--dtype must be one of auto, fp32, bf16; got 'fp16'"):
        resolve_dtype("fp16", "cpu")


@pytest.mark.parametrize("capability, name", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_gpus_before_ampere_get_fp32_not_emulated_bf16(monkeypatch, capability, name):
    """V100 (7.0) and T4 (7.5) emulate bf16 (torch.cuda.is_bf16_supported() says yes): auto means fp32 + TF32
    there, and an explicit bf16 is refused; A100 (8.0) and H100 (9.0) compute it natively."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a mocked GPU")
    assert resolve_dtype("auto", "cuda").name == name
    if name == "fp32":
        with pytest.raises(ValueError, match="no native bf16"):
            resolve_dtype("bf16", "cuda")


def test_cuda_turns_tf32_on_and_reads_the_right_peak(monkeypatch):
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        assert pick_device("cpu").type == "cpu" and not torch.backends.cuda.matmul.allow_tf32
        assert pick_device("cuda").type == "cuda"  # naming a device allocates nothing
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    for gpu, peak in (("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12), ("NVIDIA H100 80GB HBM3", 989e12),
                      ("NVIDIA A100-SXM4-80GB", 312e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, gpu=gpu: gpu)
        assert device_peak_flops(torch.device("cuda"), torch.bfloat16) == (peak, f"{gpu} datasheet bf16")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert precision.cpu_name(info) == "AMD EPYC"
    assert cpu_flags(tmp_path / "missing") == set()  # no /proc (macOS): auto falls back to fp32
    assert resolve_dtype("auto", "cpu", flags=cpu_flags(tmp_path / "missing")).name == "fp32"


def test_autocast_computes_in_the_chosen_dtype():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with resolve_dtype("bf16", "cpu").autocast():
        assert (a @ b).dtype == torch.bfloat16
    with resolve_dtype("fp32", "cpu").autocast():
        assert (a @ b).dtype == torch.float32


def test_peak_is_measured_once_per_dtype_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "measure_matmul_flops", lambda dtype, device: calls.append(dtype) or 1e11 * len(calls))
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu, torch.float32)[0] == 1e11
    bf16, source = device_peak_flops(cpu, torch.bfloat16)
    assert bf16 == 2e11 and "measured bf16" in source
    again, source = device_peak_flops(cpu, torch.bfloat16)
    assert again == 2e11 and "cached" in source and calls == [torch.float32, torch.bfloat16]
    cache = json.loads((tmp_path / "minitoddler" / "peak.json").read_text())
    assert sorted(k.rsplit("| ", 1)[1] for k in cache) == ["bf16", "fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model after 40 fp32 steps on the bundled corpus (logits far from the uniform start)."""
    d = tmp_path_factory.mktemp("dtype")
    shards = default_shards(d / "data", kind="cds")
    cfg = train_pretrain.PretrainConfig(model="tiny", data=str(shards), out=str(d / "fp32"), steps=40,
                                        batch_tokens=1024, device_batch_size=16, seq_len=64, lr=5e-3,
                                        warmup_steps=4, eval_every=0, save_every=0, log_every=1,
                                        device="cpu", dtype="fp32", seed=3)
    return train_pretrain.main(cfg), shards, cfg


def test_bf16_training_logs_its_dtype_and_keeps_fp32_weights(trained, tmp_path):
    final, shards, cfg = trained
    run = train_pretrain.PretrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bf16"), "steps": 2,
                                           "dtype": "bf16"})
    bf16_final = train_pretrain.main(run)
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dtype"] == "bf16" and rows[0]["dtype_reason"].startswith("--dtype bf16")
    assert {t.dtype for t in load_file(str(bf16_final / "model.safetensors")).values()} == {torch.float32}
    assert {t.dtype for t in load_file(str(tmp_path / "bf16/checkpoint/optimizer.safetensors")).values()
            if t.ndim} == {torch.float32}
    fp32_rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert fp32_rows[0]["dtype"] == "fp32"
    # Same seed, data and initial weights: the first step's loss is one fixed batch's, in each precision.
    first = [next(r["loss"] for r in rs if r.get("step") == 1) for rs in (fp32_rows, rows)]
    assert first[1] != first[0] and first[1] == pytest.approx(first[0], abs=0.01)  # bf16 used, and close


def test_bf16_loss_within_a_thousandth_of_fp32_on_a_fixed_batch(trained):
    final, shards, _ = trained
    model = load_model(final)
    x, y = TokenLoader(shards, "val", 8, 64, seed=0).next_batch()
    with torch.no_grad():
        fp32 = F.cross_entropy(model(x).transpose(1, 2), y).item()
        with resolve_dtype("bf16", "cpu").autocast():
            logits = model(x)
        bf16 = F.cross_entropy(logits.transpose(1, 2), y).item()
    assert logits.dtype == torch.float32            # the loss is computed in fp32 from fp32 logits
    assert fp32 < 7.0                               # trained: well below ln(8192) = 9.01
    assert bf16 != fp32                             # bf16 really was used
    assert abs(bf16 - fp32) / fp32 < 1e-3           # measured: 1.3e-4 relative (6e-4 nats at 4.64)


def test_bf16_sequence_logprobs_within_two_percent(trained, shared_data):
    final, _, _ = trained
    tok = load_tokenizer(final)
    lines = (shared_data / "eval" / "zorro" / "irregular-verb.txt").read_text().splitlines()[:64]
    model = load_model(final)
    encoded = [encode(tok, line, bos_id=model.cfg.bos_token_id) for line in lines]  # BOS + sentence
    prefixes, conts = [e[0] for e in encoded], [e[1] for e in encoded]
    fp32 = sequence_logprobs(model, prefixes, conts)
    precision = resolve_dtype("bf16", "cpu")
    with precision.autocast():  # the inference path: bf16 weights
        bf16 = sequence_logprobs(load_model(final).to(precision.infer_dtype), prefixes, conts)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    # measured: at most 0.6% relative, 0.05 nats on average, over sums of -20 to -60 nats
    torch.testing.assert_close(bf16, fp32, rtol=0.02, atol=0.1)


def test_zorro_accuracy_in_bf16_within_one_point_of_fp32(trained, shared_data):
    final, _, _ = trained
    tok = load_tokenizer(final)
    pairs = first_per_paradigm(load_pairs("zorro", [shared_data / "eval" / "zorro"]), 20)
    fp32, _ = evaluate_pairs(load_model(final), tok, pairs)
    precision = resolve_dtype("bf16", "cpu")
    with precision.autocast():
        bf16, _ = evaluate_pairs(load_model(final).to(precision.infer_dtype), tok, pairs)
    assert fp32["n_pairs"] == 23 * 20
    assert abs(bf16["micro_accuracy"] - fp32["micro_accuracy"]) <= 0.01
    assert abs(bf16["macro_accuracy"] - fp32["macro_accuracy"]) <= 0.01
