"""`python -m minitoddler.rewards.score`: reward columns with hand-computed values, the pair reward fed
(prompt, reply), resume after a crash mid-write without scoring or writing a row twice, and the
scored directory feeding train_sft's curriculum."""
import json
import subprocess
import sys

import pytest
import torch

from minitoddler.rewards import combine
from minitoddler.rewards.bert import Bert, BertConfig, load_bert, save_bert, train_wordpiece
from minitoddler.rewards.length import LengthModel
from minitoddler.rewards.score import main
from minitoddler.sft import check_scores, read_pairs, top_fraction

from conftest import REPO

# clarity (heuristic, on the caregiver line): length_term * intelligible * question_term;
# length (RM-3 pmf below, on the reply): 1 word 1.0, 2 words 0.5, 3 or more 0, divided by the punctuation marks.
PAIRS = [
    ("do you want some juice?", "juice!", 1.0, 1.0),        # 5 words, a question | 1 word, 1 mark
    ("look.", "me too.", 1 / 3 * 0.6, 0.5),                 # 1 word: 1/3, not a question: 0.6 | 2 words
    ("where is the xxx?", "ball", 0.75, 1.0),               # 3 of 4 words intelligible | 1 word, no mark
    ("is it big?", "big big dog.", 1.0, 0.0),               # 3 words | 3 words: 0
    ("what's that?", "doggie. yes.", 2 / 3, 0.25),          # 2 words: 2/3 | 2 words, 2 marks: 0.5 / 2
]


@pytest.fixture
def length_fit(tmp_path):
    # pmf of counts 4, 2, 0 for 1..3 words, alpha 1: p = 5/9, 3/9, 1/9 -> min-max 1, 0.5, 0.
    return str(LengthModel("pmf", counts=[0, 4, 2, 0]).save(tmp_path / "length.json"))


def write_pairs(path, pairs=PAIRS, extra=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "response": r, **({"age": 24.0, "line": i} if extra else {})})
                            + "\n" for i, (p, r, *_) in enumerate(pairs)))
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_columns_hold_each_reward_and_the_weighted_total(tmp_path, length_fit, capsys):
    data, out = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "scored.jsonl"
    main(["--data", str(data), "--out", str(out), "--reward", "clarity:2,length:0.5", "--length-fit", length_fit,
          "--device", "cpu", "--batch-size", "2"])
    rows = read_rows(out)
    assert [(r["prompt"], r["response"], r["age"], r["line"]) for r in rows] == \
        [(p, r, 24.0, i) for i, (p, r, *_) in enumerate(PAIRS)]  # input columns kept, order kept
    assert [r["clarity"] for r in rows] == pytest.approx([c for *_, c, _ in PAIRS], abs=1e-6)
    assert [r["length"] for r in rows] == pytest.approx([n for *_, n in PAIRS], abs=1e-6)
    assert [r["total"] for r in rows] == pytest.approx([2 * c + 0.5 * n for *_, c, n in PAIRS], abs=1e-6)
    assert set(rows[0]) == {"prompt", "response", "age", "line", "clarity", "length", "total"}
    assert not (tmp_path / "scored.jsonl.partial").exists()
    printed = capsys.readouterr().out
    assert "pairs.jsonl: 2/5 pairs" in printed and "pairs.jsonl: 5/5 pairs" in printed  # plain lines off a tty


def test_pair_reward_sees_caregiver_line_and_reply(tmp_path):
    texts = [t for p, r, *_ in PAIRS for t in (p, r)]
    tok = train_wordpiece(texts, vocab_size=120)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=96)
    rm2 = Bert(cfg, tok, 96, num_labels=1).eval()
    with torch.no_grad():
        for param in rm2.parameters():  # far from BERT's small init, so that scores differ from pair to pair
            param.normal_(0, 0.5)
    save_bert(rm2, tmp_path / "rm2")
    data, out = write_pairs(tmp_path / "pairs.jsonl", extra=False), tmp_path / "scored.jsonl"
    main(["--data", str(data), "--out", str(out), "--reward", "coherence", "--coherence-model",
          str(tmp_path / "rm2"), "--device", "cpu"])
    rm2 = load_bert(tmp_path / "rm2")
    want = rm2.score([p for p, *_ in PAIRS], [r for _, r, *_ in PAIRS])
    got = [r["coherence"] for r in read_rows(out)]
    assert got == pytest.approx(want.tolist(), abs=1e-6) and [r["total"] for r in read_rows(out)] == got
    swapped = rm2.score([r for _, r, *_ in PAIRS], [p for p, *_ in PAIRS])
    assert want.std() > 1e-3 and (swapped - want).abs().max() > 1e-3  # the pair's order matters to a cross-encoder


def counting_length(monkeypatch, length_fit):
    """Make the `length` reward count the replies it scores."""
    seen = []
    build = combine.REWARDS["length"]

    def factory(options):
        reward = build(options)
        score = reward.score

        def counted(prompts, replies):
            seen.extend(replies)
            return score(prompts, replies)
        reward.score = counted
        return reward
    monkeypatch.setitem(combine.REWARDS, "length", factory)
    return seen


def test_resume_after_a_crash_mid_write(tmp_path, length_fit, monkeypatch, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["--data", str(data), "--reward", "length", "--length-fit", length_fit, "--device", "cpu",
            "--batch-size", "2"]
    main(args + ["--out", str(tmp_path / "full.jsonl")])
    full = (tmp_path / "full.jsonl").read_text()
    # A run killed while writing row 4: rows 1-3 complete, row 4 cut off mid-line.
    lines = full.splitlines(keepends=True)
    out = tmp_path / "scored.jsonl"
    (tmp_path / "scored.jsonl.partial").write_text("".join(lines[:3]) + lines[3][:20])
    seen = counting_length(monkeypatch, length_fit)
    main(args + ["--out", str(out)])
    assert out.read_text() == full and not (tmp_path / "scored.jsonl.partial").exists()
    assert seen == [r for _, r, *_ in PAIRS[3:]]  # only the rows not yet written were scored
    assert "3 of 5 rows already scored" in capsys.readouterr().out
    before = out.stat().st_mtime_ns
    main(args + ["--out", str(out)])  # finished: checked and skipped
    assert seen == [r for _, r, *_ in PAIRS[3:]] and out.stat().st_mtime_ns == before
    assert "already scored (5 rows), skipped" in capsys.readouterr().out


def test_a_partial_output_of_other_input_or_rewards_is_refused(tmp_path, length_fit):
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["--data", str(data), "--length-fit", length_fit, "--device", "cpu", "--out", str(tmp_path / "s.jsonl")]
    partial = tmp_path / "s.jsonl.partial"
    partial.write_text(json.dumps({"prompt": "another line", "response": "juice!", "length": 1.0, "total": 1.0}) + "\n")
    with pytest.raises(SystemExit, match=r"s.jsonl.partial:1: not the scored row of .*pairs.jsonl:1"):
        main(args + ["--reward", "length"])
    partial.write_text(json.dumps({"prompt": PAIRS[0][0], "response": "juice!", "length": 1.0, "total": 1.0}) + "\n")
    with pytest.raises(SystemExit, match=r"s.jsonl.partial:1: .*other rewards than clarity, length, total"):
        main(args + ["--reward", "clarity,length"])
    with pytest.raises(ValueError, match="unknown reward 'lenght'"):
        main(args + ["--reward", "lenght"])
    with pytest.raises(SystemExit, match="is the input file"):
        main(args + ["--reward", "length", "--out", str(data)])
    assert [r["prompt"] for r in read_rows(data)] == [p for p, *_ in PAIRS]  # untouched


def test_scored_directory_feeds_the_sft_curriculum(tmp_path, length_fit):
    """A prepared corpus directory in, a pairs directory out that train_sft ranks by --score-column total."""
    write_pairs(tmp_path / "prepared/pairs/train.jsonl")
    write_pairs(tmp_path / "prepared/pairs/val.jsonl", PAIRS[:2])
    out = tmp_path / "scored"
    cmd = [sys.executable, "-m", "minitoddler.rewards.score", "--data", str(tmp_path / "prepared"), "--out", str(out),
           "--reward", "clarity,length", "--length-fit", length_fit, "--device", "cpu"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl", "val.jsonl"]
    train = read_pairs(out / "train.jsonl")
    check_scores(train, "total")
    # totals: 2.0, 0.7, 1.75, 1.0, 0.9167 -> the best 40% (2 rows) are pairs 1 and 3.
    assert [r["prompt"] for r in top_fraction(train, 0.4, "total")] == [PAIRS[0][0], PAIRS[2][0]]
    assert len(read_pairs(out / "val.jsonl")) == 2
    assert f"wrote {out / 'train.jsonl'}, {out / 'val.jsonl'}" in run.stdout
