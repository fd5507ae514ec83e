"""The README's commands, run as commands (fresh processes, the real command lines), on the bundled corpus
and tiny models: pretraining's bits per byte, resume in a new process, the `.old` checkpoint after a crash
mid-write, --resume without a checkpoint, SFT with the default curriculum, --skip-too-long, resume after
full fine-tuning, the LoRA export, prepare's and shards' flags, eval.py --task blimp and --aoa."""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minitoddler.checkpoint import load_model
from minitoddler.data.prepare import SAMPLE_DIR
from minitoddler.lora import load_adapter
from minitoddler.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# 6 steps of 8 x 64 tokens; --device-batch-size 1 makes the validation batch 1, so evaluation covers
# every validation window (the hand computation below scores them all).
PRETRAIN = ["--model", "tiny", "--steps", "6", "--batch-tokens", "512", "--device-batch-size", "1",
            "--seq-len", "64", "--warmup-steps", "1", "--eval-every", "6", "--eval-batches", "100000",
            "--log-every", "1", "--save-every", "100", "--device", "cpu", "--dtype", "fp32", "--seed", "3"]


def cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run `python ARGS...` from the repository root, as a user would."""
    done = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True, **kw)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> Path:
    """`train_pretrain.py` on the bundled corpus (no --data), run straight through."""
    out = tmp_path_factory.mktemp("pre") / "straight"
    cli("train_pretrain.py", *PRETRAIN, "--out", out)
    return out


def test_val_bpb_by_hand(pre):
    """val_loss and val_bpb of the last evaluation, recomputed from the exported model, the validation
    tokens and each token's UTF-8 bytes (its decoded text): bits per byte = nats / ln 2 / bytes."""
    last = [r for r in rows(pre) if "val_bpb" in r][-1]
    assert last["step"] == 6
    shards = pre / "data" / "shards-cds"
    tokens = np.fromfile(shards / "val.bin", dtype=np.uint16).astype(np.int64)
    windows = (len(tokens) - 1) // 64
    x = torch.tensor(np.stack([tokens[i * 64:i * 64 + 64] for i in range(windows)]))
    y = torch.tensor(np.stack([tokens[i * 64 + 1:i * 64 + 65] for i in range(windows)]))
    model = load_model(pre / "final").eval()
    with torch.no_grad():
        nats = -model(x).log_softmax(-1).gather(-1, y[..., None]).squeeze(-1).double()
    tok = load_tokenizer(pre / "final")
    special = {0, 1, 2, 3}
    nbytes = {i: len(tok.decode([i]).encode("utf-8")) for i in set(y.flatten().tolist()) - special}
    assert all("\ufffd" not in tok.decode([i]) for i in nbytes)  # whole characters: decoded bytes are exact
    counted = torch.tensor([[t not in special for t in row] for row in y.tolist()])
    total_bytes = sum(nbytes[t] for t in y.flatten().tolist() if t not in special)
    assert last["val_loss"] == pytest.approx(nats.mean().item(), rel=1e-4)
    assert last["val_bpb"] == pytest.approx(nats[counted].sum().item() / math.log(2) / total_bytes, rel=1e-4)
    assert 2.0 < last["val_bpb"] < last["val_loss"] / math.log(2)  # about 3-4 bytes a token: well under bits/token


def interrupted_run(pre, out: Path) -> int:
    """The same command as `pre`, stopped by Ctrl-C (SIGINT) once its first step is logged; returns the
    step its checkpoint holds."""
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", *PRETRAIN, "--out", str(out),
                             "--data", str(pre / "data" / "shards-cds")],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and '"loss"' in (out / "metrics.jsonl").read_text():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "stopped at step" in output, output
    step = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 6 and not (out / "final").exists()
    return step


def test_resume_in_a_fresh_process_and_from_the_old_checkpoint(pre, tmp_path):
    """Ctrl-C, then `--resume` in a new process, ends with the weights of the uninterrupted run; so does a
    resume after a crash between the two renames of a checkpoint save (only `checkpoint.old` complete,
    a half-written `checkpoint.tmp` beside it)."""
    run = tmp_path / "run"
    step = interrupted_run(pre, run)
    crashed = tmp_path / "crashed"
    shutil.copytree(run, crashed)

    resumed = cli("train_pretrain.py", *PRETRAIN, "--out", run, "--data", pre / "data" / "shards-cds", "--resume")
    assert f"resumed from {run / 'checkpoint'} at step {step}" in resumed.stdout
    assert same_weights(pre / "final", run / "final")
    straight = [r["loss"] for r in rows(pre) if "loss" in r]
    assert [r["loss"] for r in rows(run) if "loss" in r] == straight

    (crashed / "checkpoint").rename(crashed / "checkpoint.old")
    (crashed / "checkpoint.tmp").mkdir()
    (crashed / "checkpoint.tmp" / "model.safetensors").write_bytes(b"half a file")
    resumed = cli("train_pretrain.py", *PRETRAIN, "--out", crashed, "--data", pre / "data" / "shards-cds",
                  "--resume")
    assert f"resumed from {crashed / 'checkpoint.old'} at step {step}" in resumed.stdout
    assert same_weights(pre / "final", crashed / "final")


def test_resume_without_a_checkpoint_is_a_clear_error(pre, tmp_path):
    done = cli("train_pretrain.py", *PRETRAIN, "--out", tmp_path / "empty", "--data", pre / "data" / "shards-cds",
               "--resume", check=False)
    assert done.returncode != 0
    assert f"--resume: no checkpoint in {tmp_path / 'empty' / 'checkpoint'}; run without --resume" in done.stderr
    assert not (tmp_path / "empty" / "final").exists()


# --- chat SFT ------------------------------------------------------------------------------------

SFT = ["--device", "cpu", "--dtype", "fp32", "--batch-size", "8", "--device-batch-size", "4", "--samples", "0",
       "--log-every", "1", "--eval-pairs", "8", "--eval-every", "1000", "--seed", "5"]


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory) -> Path:
    """24 real caregiver -> child pairs (train) and 8 (val) from the DPO data's prompts and chosen replies."""
    items = json.loads((shared_data / "dpo" / "naturalistic_pairs.json").read_text())[:32]
    d = tmp_path_factory.mktemp("pairs")
    for name, part in (("train", items[:24]), ("val", items[24:])):
        (d / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": p["prompt"].split(":", 1)[-1].strip(),
                        "response": p["chosen"].split(":", 1)[-1].strip()}) + "\n" for p in part))
    return d


def test_sft_on_the_bundled_corpus_with_the_default_curriculum(pre, tmp_path):
    done = cli("train_sft.py", "--model", pre / "final", "--out", tmp_path / "sft", "--steps", "3", "--device", "cpu",
               "--batch-size", "4", "--device-batch-size", "4", "--samples", "1", "--eval-pairs", "8")
    assert "prepared the bundled corpus" in done.stdout
    assert "training one stage on all pairs (lr 0.0009, 2 epochs)" in done.stdout  # no scores: one stage
    train = (tmp_path / "sft" / "data" / "pairs" / "train.jsonl").read_text().splitlines()
    assert f"stage 1: top 1 = {len(train)} pairs, lr 0.0009, 2 epochs, {math.ceil(2 * len(train) / 4)} steps" \
        in done.stdout
    assert "  caregiver: " in done.stdout and "(before: " in done.stdout
    assert [r["step"] for r in rows(tmp_path / "sft") if "loss" in r] == [3] and (tmp_path / "sft/final").is_dir()


def test_skip_too_long(pre, pairs, tmp_path):
    data = tmp_path / "long"
    shutil.copytree(pairs, data)
    with (data / "train.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "and then?", "response": " ".join(["and then the big dog ran"] * 30)}) + "\n")
    args = ["train_sft.py", "--model", pre / "final", "--data", data, "--max-len", "96", "--steps", "1", *SFT]
    refused = cli(*args, "--out", tmp_path / "a", check=False)
    assert refused.returncode != 0 and f"{data / 'train.jsonl'}:25" in refused.stderr
    assert "--skip-too-long" in refused.stderr
    done = cli(*args, "--out", tmp_path / "b", "--skip-too-long")
    assert f"left out 1 training and 0 validation pairs" in done.stdout and f"train.jsonl:25" in done.stdout


def test_resume_after_full_fine_tuning(pre, pairs, tmp_path):
    """24 pairs, one stage of 2 epochs = 6 steps: stopped after 3 (--stop-after 3) and resumed in a fresh
    process, the weights equal those of the 6 steps run straight."""
    common = ["train_sft.py", "--model", pre / "final", "--data", pairs, "--stages", "1:2e-3:2", *SFT]
    cli(*common, "--out", tmp_path / "straight")
    cli(*common, "--out", tmp_path / "split", "--stop-after", "3")
    assert json.loads((tmp_path / "split/checkpoint/trainer_state.json").read_text())["step"] == 3
    done = cli(*common, "--out", tmp_path / "split", "--resume")
    assert "at step 3" in done.stdout
    assert len([r for r in rows(tmp_path / "straight") if "loss" in r]) == 6
    assert same_weights(tmp_path / "straight" / "final", tmp_path / "split" / "final")
    assert not same_weights(pre / "final", tmp_path / "straight" / "final")


def test_lora_export_is_base_plus_adapter(pre, pairs, tmp_path):
    """final/ (merged) computes what the base model with adapter/ loaded back computes, and not what the
    base computes."""
    cli("train_sft.py", "--model", pre / "final", "--data", pairs, "--stages", "1:2e-2:2", "--lora-rank", "4",
        "--out", tmp_path / "lora", *SFT)
    final = load_model(tmp_path / "lora" / "final").eval()
    base = load_model(pre / "final").eval()
    ids = torch.tensor([load_tokenizer(pre / "final").encode("*MOT: what is that?\n*CHI: a doggy.").ids])
    with torch.no_grad():
        base_logits = base(ids)
        load_adapter(base, tmp_path / "lora" / "adapter")
        adapted = base.eval()(ids)
        merged = final(ids)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    assert (merged - base_logits).abs().max() > 1e-2


# --- data preparation, shards, evaluation ----------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def words_of(text: str) -> set[str]:
    return {w.strip(".,!?;:\"'").lower() for w in text.split()} - {""}


def test_prepare_include_child_and_no_overlap(tmp_path):
    cli("-m", "minitoddler.data.prepare", "--chat-dir", SAMPLE_DIR, "--out", tmp_path / "plain", "--workers", "1")
    cli("-m", "minitoddler.data.prepare", "--chat-dir", SAMPLE_DIR, "--out", tmp_path / "flags", "--workers", "1",
        "--include-child", "--no-overlap")
    for split in ("train", "val", "test"):
        plain = read_jsonl(tmp_path / "plain" / "cds" / f"{split}.jsonl")
        flags = read_jsonl(tmp_path / "flags" / "cds" / f"{split}.jsonl")
        assert len(flags) > len(plain) >= 1  # the child's utterances are added to the caregivers'
        assert {r["text"] for r in plain} <= {r["text"] for r in flags}
        prefs = read_jsonl(tmp_path / "flags" / "prefs" / f"{split}.jsonl")
        assert prefs and all(not words_of(p["prompt"]) & words_of(p["rejected"]) for p in prefs)
    plain_prefs = [p for s in ("train", "val", "test") for p in read_jsonl(tmp_path / "plain" / "prefs" / f"{s}.jsonl")]
    assert any(words_of(p["prompt"]) & words_of(p["rejected"]) for p in plain_prefs)  # the flag changes something
    # the added cds rows are child utterances: replies of the pairs split are among them
    train_flags = {r["text"] for r in read_jsonl(tmp_path / "flags" / "cds" / "train.jsonl")}
    replies = {r["response"] for r in read_jsonl(tmp_path / "plain" / "pairs" / "train.jsonl")}
    assert len(replies & train_flags) > len(replies) // 2 and not replies <= {r["text"] for r in plain}


def documents(shard: Path) -> list[tuple[int, ...]]:
    """The token-id documents of a .bin stream, split at the <|endoftext|> separators (id 0)."""
    tokens = np.fromfile(shard, dtype=np.uint16).tolist()
    docs, current = [], []
    for t in tokens:
        if t == 0:
            if current:
                docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    return docs + ([tuple(current)] if current else [])


def test_shards_shuffle_seed(tmp_path):
    cli("-m", "minitoddler.data.prepare", "--chat-dir", SAMPLE_DIR, "--out", tmp_path / "prep", "--workers", "1")
    corpus = tmp_path / "prep" / "triplets"
    cli("-m", "minitoddler.data.shards", "--corpus", corpus, "--out", tmp_path / "in-order", "--vocab-size", "512")
    tok = tmp_path / "in-order" / "tokenizer"
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        cli("-m", "minitoddler.data.shards", "--corpus", corpus, "--out", tmp_path / name, "--tokenizer", tok,
            "--shuffle-seed", seed)
    train = [documents(tmp_path / name / "train.bin") for name in ("in-order", "a", "b", "c")]
    n = len(read_jsonl(corpus / "train.jsonl"))
    assert all(len(d) == n for d in train)
    assert all(sorted(d) == sorted(train[0]) for d in train)  # the same documents, each whole
    assert train[1] == train[2] and train[1] != train[0] and train[3] != train[1]  # seeded, and shuffled
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


def hand_words(text: str) -> list[str]:
    """Words as the generation metrics define them (runs of a-z, an apostrophe only between letters), by a
    character loop."""
    text, found, i = text.lower(), [], 0
    letter = lambda j: 0 <= j < len(text) and "a" <= text[j] <= "z"  # noqa: E731
    while i < len(text):
        if letter(i):
            start = i
            while letter(i) or (text[i:i + 1] == "'" and letter(i - 1) and letter(i + 1)):
                i += 1
            found.append(text[start:i])
        else:
            i += 1
    return found


def test_eval_blimp_and_aoa_commands(pre, shared_data, tmp_path):
    blimp = [shared_data / "eval" / "blimp" / f for f in ("anaphor_gender_agreement.jsonl", "adjunct_island.jsonl")]
    done = cli("eval.py", "--model", pre / "final", "--task", "blimp", "--data", *blimp, "--limit", "20",
               "--convention", "minicons", "--out", tmp_path / "e", "--device", "cpu")
    result = json.loads((tmp_path / "e" / "results.json").read_text())["tasks"]["blimp"]
    assert result["n_pairs"] == 40 and set(result["paradigms"]) == {"anaphor_gender_agreement", "adjunct_island"}
    assert result["convention"] == "minicons" and "blimp: macro accuracy" in done.stdout

    aoa_csv = shared_data / "aoa" / "kuperman_2012_aoa.csv"
    cli("eval.py", "--model", pre / "final", "--task", "generation", "--aoa", aoa_csv, "--limit", "4",
        "--max-new-tokens", "8", "--format", "dialogue", "--temperature", "1.0", "--out", tmp_path / "e",
        "--device", "cpu")
    metrics = json.loads((tmp_path / "e" / "results.json").read_text())["tasks"]["generation"]["metrics"]
    with aoa_csv.open(newline="") as f:
        norms = {r["Word"].lower(): float(r["Rating.Mean"]) for r in csv.DictReader(f) if r["Rating.Mean"] != "NA"}
    replies = [r["reply"] for r in read_jsonl(tmp_path / "e" / "generations.jsonl")]
    tokens = [w for r in replies for w in hand_words(r)]
    rated = [norms[w] for w in tokens if w in norms]
    assert len(replies) == 4 and tokens, "the model produced no words to rate"
    assert metrics["aoa_coverage"] == pytest.approx(len(rated) / len(tokens), abs=1e-6)
    if rated:
        assert metrics["mean_aoa_years"] == pytest.approx(sum(rated) / len(rated), abs=1e-6)
    else:
        assert metrics["mean_aoa_years"] is None
