"""benchmarks/gpu_check.py runs end to end (on the CPU, --quick: it checks the script, it measures nothing),
so that the day a GPU is at hand the check does not stop at a typo."""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_part_and_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up while the file executes
    spec.loader.exec_module(gpu_check)
    gpu_check.main(gpu_check.CheckConfig(model="tiny", device="cpu", out=str(tmp_path), batches="2", quick=True))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert isinstance(report["attention"]["MATH"], float)  # the math kernel always runs
    for mode in ("eager", "compiled"):
        assert report[f"pretrain_b2_{mode}"]["tok_s"] > 0
    assert json.loads((tmp_path / "trace_pretrain.json").read_text())["traceEvents"]
    assert report["decode"]["same_tokens"] is True
    assert report["grpo"]["graph_breaks"] == {} and (tmp_path / "grpo" / "final" / "model.safetensors").is_file()
