"""LLM judge and teacher confidence on a tiny random ToddlerLM with a real (tiny) tokenizer."""
import json

import pytest
import torch

from minitoddler.checkpoint import save_model
from minitoddler.config import PRESETS, ModelConfig
from minitoddler.model import ToddlerLM
from minitoddler.rewards import build_reward
from minitoddler.rewards.judge import JUDGE_SYSTEM, JudgeReward, parse_rating
from minitoddler.rewards.references import load_references
from minitoddler.rewards.teacher import TeacherReward, rank_reward
from minitoddler.tokenizer import IM_END, train_tokenizer

TEXTS = ["do you want some juice ?", "yes please .", "where is the dog ?", "the dog is outside .",
         "0 1 2 3 4 5 rate the answer", "mot: chi: score", JUDGE_SYSTEM] * 4


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    tok = train_tokenizer(TEXTS, d, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = ToddlerLM(ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.get_vocab_size()})).eval()
    save_model(model, d, tokenizer=d)
    return model, tok, d


def reference_logprob(model, prefix, continuation):
    """Summed log p(continuation | prefix), one sequence, no batching: an independent reference."""
    ids = torch.tensor([prefix + continuation])
    with torch.no_grad():
        logp = model(ids)[0].log_softmax(-1)
    return sum(float(logp[len(prefix) + j - 1, t]) for j, t in enumerate(continuation))


def test_rank_reward_hand_values():
    answers = [-9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, -0.5]
    assert rank_reward(-4.0, answers) == pytest.approx(2 * 6 / 10 - 1)   # ties count as <=
    assert rank_reward(-100.0, answers) == -1.0 and rank_reward(0.0, answers) == 1.0
    assert rank_reward(-5.5, answers) == pytest.approx(2 * 4 / 10 - 1)


def test_teacher_reward_matches_independent_ranks(lm, tmp_path):
    model, tok, _ = lm
    answers = ["yes please .", "the dog is outside .", "juice", "no", "dog", "where", "please .", "yes",
               "some juice ?", "outside"]
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps([{"prompt": "*MOT: do you want some juice ?", "answers": answers}]))
    teacher = TeacherReward(model, tok, load_references(refs_path), batch_size=3)
    replies = ["yes please .", "dog dog dog dog", "", "   "]
    got = teacher.score(["do you want some juice ?"] * 4, replies)
    prefix = tok.encode("do you want some juice ?", add_special_tokens=False).ids
    ref = [reference_logprob(model, prefix, tok.encode(" " + a, add_special_tokens=False).ids) for a in answers]
    for i, reply in enumerate(replies[:2]):
        ours = reference_logprob(model, prefix, tok.encode(" " + reply, add_special_tokens=False).ids)
        rank = sum(lp <= ours + 1e-5 for lp in ref) / 10
        assert float(got[i]) == pytest.approx(2 * rank - 1)
    assert float(got[0]) >= -0.8  # the reply equals one of the answers, so it ranks at least above itself
    assert got[2:].tolist() == [-0.5, -0.5]
    with pytest.raises(KeyError, match="no teacher answers"):
        teacher.score(["what is that ?"], ["a dog"])


def test_teacher_samples_its_own_answers(lm):
    model, tok, _ = lm
    teacher = TeacherReward(model, tok, None, samples=4, max_new_tokens=5, seed=1)
    got = teacher.score(["where is the dog ?", "where is the dog ?"], ["the dog", "outside ."])
    n = len(teacher._answer_logprobs["where is the dog ?"])  # empty samples are dropped
    assert got.shape == (2,) and 1 <= n <= 4
    assert all(any(x == pytest.approx(2 * k / n - 1) for k in range(n + 1)) for x in got.tolist())


class ScriptedJudge(ToddlerLM):
    """Answers with fixed next-token logits: `first` after the prompt, then end-of-turn."""

    def __init__(self, cfg, first: torch.Tensor, then: int):
        super().__init__(cfg)
        self.first, self.then = first, then

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        B, T = ids.shape
        prefill = cache is None or cache.length == 0
        if cache is not None:
            cache.length += T
        row = self.first if prefill else torch.nn.functional.one_hot(torch.tensor(self.then), self.cfg.vocab_size) * 50.0
        return row.float().expand(B, logits_to_keep or T, -1).clone()


def test_judge_parses_greedy_answers_and_counts_failures(lm):
    _, tok, _ = lm
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.get_vocab_size()})
    three = torch.zeros(cfg.vocab_size)
    three[tok.token_to_id("3")] = 50.0
    judge = JudgeReward(ScriptedJudge(cfg, three, tok.token_to_id(IM_END)), tok)
    assert judge.answers(["do you want some juice ?"], ["yes ."]) == ["3"]
    assert judge.score(["a", "b"], ["c", "d"]).tolist() == [3.0, 3.0] and judge.stats() == {"unparseable": 0}
    silent = torch.zeros(cfg.vocab_size)
    silent[tok.token_to_id(IM_END)] = 50.0
    judge = JudgeReward(ScriptedJudge(cfg, silent, tok.token_to_id(IM_END)), tok)
    assert judge.score(["a", "b"], ["c", "d"]).tolist() == [0.0, 0.0] and judge.stats() == {"unparseable": 2}
    ids = judge.prompt_ids("do you want some juice ?", "yes .")
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n" + JUDGE_SYSTEM.lower()) and text.endswith(
        "mot: do you want some juice ?\nchi: yes .<|im_end|>\n<|im_start|>assistant\n")


def test_judge_expected_rating_over_digit_probabilities(lm):
    _, tok, _ = lm
    cfg = ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.get_vocab_size()})
    p = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4, 0.0]) + 1e-12
    logits = torch.full((cfg.vocab_size,), -5.0)
    for d in range(6):
        logits[tok.token_to_id(str(d))] = torch.log(p[d])
    judge = JudgeReward(ScriptedJudge(cfg, logits, 0), tok, expected=True)
    want = float((p / p.sum()) @ torch.arange(6.0))  # 0.2*2 + 0.3*3 + 0.4*4 = 2.9
    assert judge.score(["a", "where is the dog ?"], ["b", "outside"]).tolist() == pytest.approx([want, want], abs=1e-4)


def test_judge_expected_rating_of_rows_of_different_lengths_equals_each_alone(lm):
    """Batched rows (left-padded, the last position only) score as each row alone through the full model."""
    _, tok, _ = lm
    torch.manual_seed(0)
    model = ToddlerLM(ModelConfig(**{**PRESETS["tiny"], "vocab_size": tok.get_vocab_size()})).eval()
    judge = JudgeReward(model, tok, expected=True)
    prompts, replies = ["hi", "where is the big red dog going now ?"], ["yes", "outside with daddy"]
    alone = []
    for p, r in zip(prompts, replies):
        with torch.no_grad():
            last = model(torch.tensor([judge.prompt_ids(p, r)]))[0, -1]
        alone.append(float(last[judge.digit_ids].softmax(-1) @ torch.arange(6.0)))
    assert judge.score(prompts, replies).tolist() == pytest.approx(alone, abs=1e-5)


def test_parse_rating():
    assert [parse_rating(a) for a in ("4", "I'd say 3.", "2.5 out of 5", "10", "no idea", "")] == \
        [4.0, 3.0, 2.5, 5.0, None, None]


def test_judge_and_teacher_from_registry(lm, tmp_path):
    _, _, d = lm
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"prompt": "where is the dog ?", "answers": ["outside", "the dog", "yes"]}) + "\n")
    reward = build_reward("judge:0.2,teacher", {"judge_model": str(d), "teacher_model": str(d), "references": str(refs)})
    parts = reward.components(["where is the dog ?"] * 2, ["outside .", "juice"])
    assert set(parts) == {"judge", "teacher"} and ((parts["judge"] >= 0) & (parts["judge"] <= 5)).all()
    assert "reward/judge_unparseable" in reward.metrics(parts)
