"""Generation metrics: word/utterance measures and BLEU-1 against hand counts, prompt files, prompt rendering,
sampling end to end on a tiny random model, and the reward-model / similarity wiring."""
import json
import math

import pytest
import torch

from minitoddler.config import ModelConfig
from minitoddler.evals.generation import (DEFAULT_PROMPTS, bleu1, evaluate_generation, load_prompts, model_scores,
                                          text_metrics)
from minitoddler.evals.words import read_aoa, read_cdi_words, utterances, words
from minitoddler.formats import prompt_ids, stop_ids
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(shared_data, tmp_path_factory):
    pairs = json.loads((shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json").read_text())
    texts = [f"{p['prompt']}\n{p['chosen']}" for p in pairs[:2000]]
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, out, vocab_size=512)
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    eos = tokenizer.token_to_id("<|endoftext|>")
    cfg = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos)
    return ToddlerLM(cfg).eval()


def test_words_and_utterances():
    assert words("*CHI: I'm gonna eat the cookie !") == ["i'm", "gonna", "eat", "the", "cookie"]
    assert utterances("no ! mine . ") == [["no"], ["mine"]]
    assert utterances("...") == [] and words("") == []


def test_text_metrics_by_hand():
    replies = ["I want juice .", "no ! no juice .", "", "doggie"]
    aoa = {"i": 2.0, "want": 3.0, "juice": 4.0}
    m = text_metrics(replies, aoa=aoa, cdi={"juice", "no", "doggie"})
    # words: i want juice | no no juice | - | doggie  ->  7 tokens, 5 types
    assert m["n_replies"] == 4 and m["empty_share"] == 0.25
    assert m["words_per_reply"] == pytest.approx(7 / 4)
    assert m["mlu_words"] == pytest.approx(7 / 4)              # utterances: [i want juice] [no] [no juice] [doggie]
    assert m["single_sentence_share"] == pytest.approx(2 / 4)  # the first and the last reply
    assert m["type_token_ratio"] == pytest.approx(5 / 7)
    assert m["mean_aoa_years"] == pytest.approx((2 + 3 + 4 + 4) / 4)  # rated tokens: i want juice juice
    assert m["aoa_coverage"] == pytest.approx(4 / 7)
    assert m["cdi_word_share"] == pytest.approx(5 / 7)


def test_bleu1_by_hand():
    assert bleu1("the dog the dog", "the big dog") == pytest.approx(2 / 4)  # clipped unigrams 2 of 4, no penalty
    assert bleu1("dog", "the big dog") == pytest.approx(math.exp(1 - 3 / 1))  # precision 1, brevity penalty
    assert bleu1("cat", "the big dog") == 0.0 and bleu1("", "dog") == 0.0


def test_word_resources_on_shared_data(shared_data):
    aoa = read_aoa(shared_data / "aoa" / "kuperman_2012_aoa.csv")
    assert aoa["a"] == 2.89 and aoa["aardvark"] == 9.89 and "actinium" not in aoa  # rated NA
    cdi = read_cdi_words(shared_data / "aoa" / "babylm_cdi_aoa_word_list.csv")
    assert {"airplane", "bathtub", "lot"} <= cdi and "a lot" not in cdi  # multi-word entries give their words
    ws = read_cdi_words(shared_data / "aoa" / "wordbank_english_ws.csv")
    # 'chicken (animal)' -> chicken; 'owie/boo boo' -> owie, boo; 'mommy*' -> mommy
    assert {"chicken", "owie", "boo", "mommy", "choo"} <= ws and not any("(" in w or "*" in w for w in ws)


def test_prompt_files(shared_data, tmp_path):
    default = load_prompts()
    assert DEFAULT_PROMPTS.is_file() and len(default) >= 50
    assert len({p.text for p in default}) == len(default) and all(len(words(p.text)) >= 2 for p in default)
    path = tmp_path / "p.txt"
    path.write_text("# comment\n*MOT: what's that ?\t*CHI: a ball .\nmore juice ?\n")
    got = load_prompts(path)
    assert [(p.text, p.gold) for p in got] == [("what's that ?", "a ball ."), ("more juice ?", "")]
    pairs = load_prompts(shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json")
    assert len(pairs) == 7548 and (pairs[0].text, pairs[0].gold) == ("you are green ?", "I am blue .")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "hi"}\n{"gold": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: each item needs"):
        load_prompts(tmp_path / "bad.jsonl")


def test_prompt_rendering_and_stops(tokenizer):
    ids = prompt_ids(tokenizer, "what's that ?", "dialogue", bos_id=0)
    assert ids[0] == 0 and tokenizer.decode(ids[1:]) == "*mot: what's that ?\n*chi:"
    newline_tokens = stop_ids(tokenizer, "dialogue", 0)
    assert 0 in newline_tokens and tokenizer.encode("\n", add_special_tokens=False).ids[0] in newline_tokens
    assert all("\n" in tokenizer.decode([i], skip_special_tokens=False) for i in newline_tokens if i != 0)
    chat = tokenizer.decode(prompt_ids(tokenizer, "more juice ?", "chat", bos_id=0), skip_special_tokens=False)
    assert chat.endswith("<|im_start|>user\ncaregiver: more juice ?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.token_to_id("<|im_end|>") in stop_ids(tokenizer, "chat", 0)


def hand_word_count(text: str) -> int:
    """Words as the metrics define them (runs of a-z, an apostrophe only between letters), by a character loop."""
    text, count, i = text.lower(), 0, 0
    letter = lambda j: 0 <= j < len(text) and "a" <= text[j] <= "z"  # noqa: E731
    while i < len(text):
        if letter(i):
            count += 1
            while letter(i) or (text[i:i + 1] == "'" and letter(i - 1) and letter(i + 1)):
                i += 1
        else:
            i += 1
    return count


@pytest.mark.parametrize("fmt", ["dialogue", "chat"])
def test_evaluate_generation_end_to_end(model, tokenizer, shared_data, fmt):
    prompts = load_prompts(shared_data / "eval" / "dialogue-minimal-pairs" / "dialogue_eval_words.json")[:4]
    kwargs = dict(fmt=fmt, samples=2, max_new_tokens=6, temperature=1.0, seed=5,
                  aoa_path=shared_data / "aoa" / "kuperman_2012_aoa.csv",
                  cdi_path=shared_data / "aoa" / "babylm_cdi_aoa_word_list.csv", n_examples=3)
    results, rows = evaluate_generation(model, tokenizer, prompts, **kwargs)
    assert len(rows) == 8 and [r["prompt"] for r in rows[:2]] == [prompts[0].text] * 2
    assert all("\n" not in r["reply"] for r in rows)
    m = results["metrics"]
    assert m["n_replies"] == 8 and {"mlu_words", "type_token_ratio", "cdi_word_share", "bleu1_to_gold"} <= set(m)
    assert results["gold_reference"]["n_replies"] == 4 and len(results["examples"]) == 3
    counts = [hand_word_count(r["reply"]) for r in rows]
    assert sum(counts) > 0 and m["words_per_reply"] == pytest.approx(sum(counts) / 8)
    assert m["type_token_ratio"] <= 1.0 and m["empty_share"] == pytest.approx(sum(c == 0 for c in counts) / 8)
    again, _ = evaluate_generation(model, tokenizer, prompts, **kwargs)
    assert again["examples"] == results["examples"]  # seeded


def test_reward_and_similarity_models(tmp_path):
    from minitoddler.rewards.bert import Bert, BertConfig, load_bert, save_bert, train_wordpiece

    torch.manual_seed(0)
    wp = train_wordpiece(["i want juice", "no mine", "what is that", "a ball"], vocab_size=60)
    cfg = BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    save_bert(Bert(cfg, wp, max_length=32, num_labels=1).eval(), tmp_path / "rm")
    prompts, replies, golds = ["what is that ?", "more juice ?"], ["a ball", "no"], ["a ball", "yes juice"]
    got = model_scores(prompts, replies, golds, rm1=tmp_path / "rm", rm2=tmp_path / "rm",
                       similarity_model=tmp_path / "rm")
    rm = load_bert(tmp_path / "rm")
    assert got["rm1_childlike"] == pytest.approx(rm.score(replies).mean().item(), abs=1e-6)
    assert got["rm2_coherence"] == pytest.approx(rm.score(prompts, replies).mean().item(), abs=1e-6)
    e = rm.embed(replies), rm.embed(golds)
    assert got["similarity_to_gold"] == pytest.approx((e[0] * e[1]).sum(-1).mean().item(), abs=1e-6)
    assert model_scores(prompts, replies, golds) == {}


def test_a_reply_is_decoded_whole_in_chat_and_one_line_where_scored(tokenizer):
    """ChatML keeps a reply's later lines (chat, serve); the metrics and rewards score its first line only,
    as the dialogue format always does (a reply ends at the line break there)."""
    from minitoddler.formats import decode_reply
    ids = tokenizer.encode("i want it .\nmore juice", add_special_tokens=False).ids + [tokenizer.token_to_id("<|im_end|>")]
    assert decode_reply(tokenizer, ids, "chatml") == "i want it .\nmore juice"
    assert decode_reply(tokenizer, ids, "chatml", one_line=True) == "i want it ."
    assert decode_reply(tokenizer, ids, "dialogue") == "i want it ."
