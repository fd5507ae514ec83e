"""The terminal chat driven through stdin: replies equal direct `generate` calls on the conversation so
far (chat and dialogue formats), /reset forgets, /quit and end of input exit cleanly, the study log, the
history trimming that keeps the system prompt, and --dtype."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minitoddler import chat
from minitoddler.chat import fit_prompt, load
from minitoddler.checkpoint import save_model
from minitoddler.config import ModelConfig
from minitoddler.model import ToddlerLM
from minitoddler.chatml import caregiver_chat, render_chat
from minitoddler.formats import decode_reply
from minitoddler.generate import generate
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START
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
    first = decode_reply(tok, greedy(model, tok, bos + tok.encode("*MOT: hello\n*CHI:", add_special_tokens=False).ids, stops), "dialogue")
    second = decode_reply(tok, greedy(model, tok, bos + tok.encode(f"*MOT: hello\n*CHI: {first}\n*MOT: bye bye\n*CHI:", add_special_tokens=False).ids,
                                      stops), "dialogue")
    assert r.stdout == f"toddler: {first}\ntoddler: {second}\n"


def test_model_flag_is_required():
    with pytest.raises(SystemExit, match="--model DIR is required"):
        chat.main([])


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


def test_foreign_tokenizer_smollm2_style(tmp_path, monkeypatch, capsys):
    """A SmolLM2-Instruct-like directory: its own special-token ids (<|im_end|> = 3 here, no <|pad|>)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["where is the doggie?", "Mommy, I want juice!", "no! mine. me do it."] * 30,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|x|>", IM_START, IM_END],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, initializer_range=0.3,
                      bos_token_id=2, eos_token_id=3)
    save_model(ToddlerLM(cfg), tmp_path / "m", tokenizer=tmp_path / "tok")
    monkeypatch.setattr("sys.stdin", io.StringIO("Where is the Doggie?\n"))
    chat.main(["--model", str(tmp_path / "m"), "--temperature", "0", "--max-new-tokens", "5", "--system-prompt", "",
               "--user-prefix", "", "--device", "cpu"])
    model, tok = load(str(tmp_path / "m"), "cpu")
    ids = tok.encode(f"{IM_START}user\nWhere is the Doggie?{IM_END}\n{IM_START}assistant\n", add_special_tokens=False).ids
    out = generate(model, [ids], 5, stop_ids=[3])[0]
    assert capsys.readouterr().out == f"toddler: {tok.decode(out, skip_special_tokens=True).strip()}\n"


def test_dtype_bf16_and_a_bad_dtype(model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("where is the ball?\n"))
    weights = []
    monkeypatch.setattr(chat, "generate", lambda m, *a, **k: weights.append(m.embed_tokens.weight.dtype) or
                        generate(m, *a, **k))
    flags = ["--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]
    chat.main(flags + ["--dtype", "bf16"])
    assert weights == [torch.bfloat16]
    model, tok = load(str(model_dir), "cpu", torch.bfloat16)
    ids = render_chat(tok, caregiver_chat("where is the ball?"), add_generation_prompt=True).ids
    out = capsys.readouterr()
    assert out.out == f"toddler: {decode_reply(tok, greedy(model, tok, ids, [0, 2]), 'chatml')}\n"
    assert "dtype bf16 (--dtype bf16" in out.err
    with pytest.raises(ValueError, match="--dtype must be one of auto, fp32, bf16; got 'fp16'"):
        chat.main(flags + ["--dtype", "fp16"])
