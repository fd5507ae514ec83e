"""eval.py with the BabyLM tasks: --suite babylm on a small copy of the official layout (the table in
results.json, report.md and --compare), the conventions each task takes, and bad input ending in one line
that names the file, with exit status 2."""
import json
import shutil
import sys
import zipfile

import pytest

from minitoddler import cli
from minitoddler.evals.report import TABLE_ROWS
from scripts import REPO, load_script
from tiny_chat_model import random_lm_dir

PASSWORD = "BabyLM2025"
eval_script = load_script("eval")


def run(*args):
    eval_script.main([str(a) for a in args])


@pytest.fixture(scope="module")
def layout(shared_data, tmp_path_factory):
    """A small fast_eval folder: a few lines of each public task, EWoK's real password zip, and entity
    tracking's lines unpacked from theirs (a temporary folder only)."""
    src, root = shared_data / "babylm" / "fast_eval", tmp_path_factory.mktemp("evaluation_data") / "fast_eval"
    for folder, names, n in (("blimp_fast", ("adjunct_island", "passive_1"), 5), ("supplement_fast", ("turn_taking",), 5),
                             ("wug_adj_nominalization", ("wug_adj_nominalization",), 30)):
        (root / folder).mkdir(parents=True)
        for name in names:
            lines = (src / folder / f"{name}.jsonl").read_text().splitlines()[:n]
            (root / folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "reading").mkdir()
    (root / "reading" / "reading_data.csv").write_text(
        "\n".join((src / "reading" / "reading_data.csv").read_text().splitlines()[:121]) + "\n")
    shutil.copy(src / "ewok_fast.zip", root / "ewok_fast.zip")
    (root / "entity_tracking_fast").mkdir()
    with zipfile.ZipFile(shared_data / "babylm" / "entity_tracking.zip") as z:
        lines = z.read("fast_eval/entity_tracking_fast/regular.jsonl", pwd=PASSWORD.encode()).decode().splitlines()
    (root / "entity_tracking_fast" / "regular.jsonl").write_text("\n".join(lines[:3] + lines[-3:]) + "\n")
    return root


@pytest.fixture(scope="module")
def model_dir(layout, tmp_path_factory):
    texts = [line for f in layout.rglob("*.jsonl") for line in f.read_text().splitlines()]
    return random_lm_dir(texts * 2, tmp_path_factory.mktemp("lm"), 128, 400, bos_token_id=0, eos_token_id=0)


def test_suite_fills_the_table(layout, model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    run("--model", model_dir, "--suite", "babylm", layout, "--zip-password", PASSWORD, "--out", out, "--device", "cpu")
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    tasks = results["tasks"]
    assert list(tasks) == ["blimp", "supplement", "entity_tracking", "ewok", "wug_adj", "reading"]
    assert set(results["suite"]["missing"]) == {"comps", "wug_past"}
    assert f"comps: no data in {layout} (the official copy: full_eval/comps/" in printed
    assert tasks["blimp"]["n_items"] == 10 and tasks["ewok"]["n_items"] == 1100 and tasks["wug_adj"]["n_items"] == 30
    assert tasks["entity_tracking"]["uids"].keys() == {"regular_0_ops", "regular_5_ops"}
    assert tasks["reading"]["n_words"] == 120 and all(t["dtype"].startswith("fp32") for t in tasks.values())
    # the table: every row the suite ran, with the score its task reports, in the paper's order
    want = {row: tasks[task][key] for row, task, key in TABLE_ROWS if task in tasks}
    assert results["table"] == want and list(results["table"]) == [r for r, t, _ in TABLE_ROWS if t in tasks]
    assert want["BLiMP"] == pytest.approx(sum(u["percent"] for u in tasks["blimp"]["uids"].values()) / 2)
    report = (out / "report.md").read_text().splitlines()
    i = report.index("## The table")
    assert report[i + 2:i + 4] == ["| task | metric | score |", "|---|---|---:|"]
    assert f"| BLiMP | accuracy % | {want['BLiMP']:.2f} |" in report
    assert f"| Reading: self-paced reading | normalised ΔR² x 100 | {want['Reading: self-paced reading']:.2f} |" in report
    assert f"| Wug adjective nominalization | Spearman's ρ x 100 | {want['Wug adjective nominalization']:.2f} |" in report
    assert "| COMPS |  | – |" in report and any(line.startswith("- wug_past: no data in") for line in report)
    assert "| Entity tracking | accuracy % |" in printed  # the table is printed too

    # --compare: the table rows as the first rows, Zorro (a custom task) beside the BabyLM tasks
    run("--model", model_dir, "--out", out, "--device", "cpu", "--task", "zorro", "--limit", 5, "--data",
        REPO.parent / "shared" / "data" / "eval" / "zorro" / "irregular-verb.txt")
    other = tmp_path / "other"
    run("--model", model_dir, "--out", other, "--device", "cpu", "--task", "wug_adj", "--data",
        layout / "wug_adj_nominalization")
    capsys.readouterr()
    run("--compare", out, other)
    lines = capsys.readouterr().out.splitlines()
    zorro = json.loads((out / "results.json").read_text())["tasks"]["zorro"]
    rho = [json.loads((d / "results.json").read_text())["tasks"]["wug_adj"]["score"] for d in (out, other)]
    assert lines[3] == f"| BLiMP (accuracy %) | {want['BLiMP']:.2f} | – |"
    assert f"| Wug adjective nominalization (Spearman's ρ x 100) | {rho[0]:.2f} | {rho[1]:.2f} |" in lines
    assert f"| Zorro (accuracy %) | {100 * zorro['macro_accuracy']:.2f} | – |" in lines
    assert rho[0] == pytest.approx(rho[1])  # the same model and items


def test_conventions_per_task(layout, model_dir, tmp_path):
    blimp = ["--model", model_dir, "--device", "cpu", "--task", "blimp", "--data", layout / "blimp_fast"]
    run(*blimp, "--out", tmp_path / "a")
    run(*blimp, "--out", tmp_path / "b", "--convention", "bos")
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["tasks"]["blimp"] for d in "ab")
    assert a["convention"] == "babylm" and "uids" in a and b["convention"] == "bos" and "paradigms" in b
    with pytest.raises(SystemExit, match="--convention bos does not apply to the ewok task"):
        run("--model", model_dir, "--task", "ewok", "--convention", "bos", "--out", tmp_path)
    with pytest.raises(SystemExit, match="--convention babylm does not apply to the zorro task"):
        run("--model", model_dir, "--task", "zorro", "--convention", "babylm", "--out", tmp_path)
    with pytest.raises(SystemExit, match="--suite takes 'babylm DIR'"):
        run("--model", model_dir, "--suite", layout, "--out", tmp_path)
    with pytest.raises(ValueError, match=r"reading: 3 rows .* too few"):
        run("--model", model_dir, "--task", "reading", "--data", layout / "reading" / "reading_data.csv",
            "--limit", 3, "--out", tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--task", "ewok", "--data", "{layout}/blimp_fast/passive_1.jsonl"],
     r"^error: {layout}/blimp_fast/passive_1.jsonl:1: not a ewok item: no 'Domain', 'Context1', 'Target1', 'Target2' "
     r"\(its fields are those of a blimp file: use --task blimp or supplement\)"),
    (["--task", "ewok", "--data", "{layout}/ewok_fast.zip"],
     r"^error: {layout}/ewok_fast.zip:evaluation_data/fast_eval/ewok_fast/agent-properties.jsonl: the zip is encrypted"),
    (["--suite", "babylm", "{layout}"], r"^error: {layout}/ewok_fast.zip:.*: the zip is encrypted: pass --zip-password"),
    (["--task", "wug_past", "--data", "{layout}/wug_past_tense"],
     r"^error: {layout}/wug_past_tense not found: the wug_past data is full_eval/wug_past_tense in the official"),
    (["--task", "blimp", "--data", "{tmp}/empty.jsonl"], r"^error: {tmp}/empty.jsonl: empty \(no blimp items\)"),
])
def test_bad_input_is_one_line_and_status_2(layout, model_dir, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty.jsonl").write_text("\n")
    args = [a.format(layout=layout, tmp=tmp_path) for a in args]
    monkeypatch.setattr(sys, "argv", ["eval.py", "--model", str(model_dir), "--out", str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run(eval_script.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    import re
    assert re.match(message.format(layout=re.escape(str(layout)), tmp=re.escape(str(tmp_path))), err[0]), err[0]
