"""The terminal chat driven through stdin: replies equal direct `generate` calls on the conversation so
far (chat and dialogue formats), /reset forgets, /quit and end of input exit cleanly, the study log, and
the history trimming that keeps the system prompt."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minitoddler.chat import fit_prompt, load
from minitoddler.chatml import caregiver_chat, render_chat
from minitoddler.evals.generation import clean_reply
from minitoddler.generate import generate
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT
from tiny_chat_model import make_model_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(shared_data, tmp_path_factory):
    return make_model_dir(shared_data, tmp_path_factory.mktemp("repl"))


def run_chat(model_dir, stdin, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minitoddler.chat", "--model", str(model_dir), "--temperature", "0",
                           "--max-new-tokens", "6", *flags], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def greedy(model, tok, ids, stops, n=6):
    return generate(model, [ids], n, stop_ids=stops)[0]


def test_chat_format_through_stdin(model_dir, tmp_path):
    log = tmp_path / "chat.jsonl"
    r = run_chat(model_dir, "hello\nwhat is that?\n/reset\n\nwhat is that?\n/quit\nnot read\n", "--log", str(log))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("toddler: ") == 3 and "/reset" in r.stderr
    replies = [json.loads(line)["reply"] for line in log.read_text().splitlines()]
    assert len(replies) == 3 and all(r.stdout.count(f"toddler: {x}") for x in replies)

    model, tok = load(str(model_dir), "cpu")
    decode = lambda out: tok.decode([t for t in out if t not in (0, 2)], skip_special_tokens=True).strip()
    first = decode(greedy(model, tok, render_chat(tok, caregiver_chat("hello"), add_generation_prompt=True).ids, [0, 2]))
    history = caregiver_chat("hello", first) + [{"role": "user", "content": "Caregiver: what is that?"}]
    second = decode(greedy(model, tok, render_chat(tok, history, add_generation_prompt=True).ids, [0, 2]))
    alone = decode(greedy(model, tok, render_chat(tok, caregiver_chat("what is that?"),
                                                  add_generation_prompt=True).ids, [0, 2]))
    assert replies == [first, second, alone] and second != alone  # the history counted, and /reset forgot it


def test_dialogue_format_and_end_of_input(model_dir):
    r = run_chat(model_dir, "hello\nbye bye\n", "--format", "dialogue")  # no /quit: end of input ends
    assert r.returncode == 0, r.stderr
    model, tok = load(str(model_dir), "cpu")
    stops = [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i], skip_special_tokens=False)] + [0]
    bos = [model.cfg.bos_token_id]
    first = clean_reply(tok, greedy(model, tok, bos + tok.encode("*MOT: hello\n*CHI:", add_special_tokens=False).ids, stops))
    second = clean_reply(tok, greedy(model, tok, bos + tok.encode(f"*MOT: hello\n*CHI: {first}\n*MOT: bye bye\n*CHI:", add_special_tokens=False).ids,
                                     stops))
    assert r.stdout == f"toddler: {first}\ntoddler: {second}\n"


def test_model_flag_is_required():
    r = subprocess.run([sys.executable, "-m", "minitoddler.chat"], input="", capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode != 0 and "--model DIR is required" in r.stderr


def test_fit_prompt_drops_oldest_turns_never_the_system_prompt(model_dir):
    _, tok = load(str(model_dir), "cpu")
    system = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    turns = []
    for k in range(6):
        turns += [{"role": "user", "content": f"Caregiver: shall we count {k} red blocks"},
                  {"role": "assistant", "content": "block"}]
    turns.append({"role": "user", "content": "Caregiver: how many?"})
    size = lambda msgs: len(render_chat(tok, msgs, add_generation_prompt=True, default_system=None).ids)
    assert fit_prompt(tok, [system] + turns, "chat", 10_000) == (
        render_chat(tok, [system] + turns, add_generation_prompt=True).ids, 0)
    room = size([system] + turns[5:])  # fits from the 6th message on (an assistant turn: dropped too)
    ids, dropped = fit_prompt(tok, [system] + turns, "chat", room)
    assert dropped == 6 and ids == render_chat(tok, [system] + turns[6:], add_generation_prompt=True).ids
    assert size([system] + turns[4:]) > room
    with pytest.raises(ValueError, match="the last message take"):
        fit_prompt(tok, [system] + turns, "chat", size([system, turns[-1]]) - 1)
