"""No host syncs in the hot loops: on a GPU every read of a device value back to Python (`.item()`, `float()`,
`bool()`, boolean indexing) stalls the host until the device has finished, so kernels stop overlapping with
Python. A CPU shows the same reads: count `aten._local_scalar_dense` (what every such read calls) and check
that an SFT or GRPO step reads as many values with four micro-batches as with one (the reads are per step,
not per micro-batch), and that decoding reads the stop flag once per `stop_check_every` tokens."""
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train_rl
import train_sft
from minitoddler.checkpoint import load_model
from minitoddler.distributed import Dist
from minitoddler.generate import generate
from minitoddler.precision import resolve_dtype
from minitoddler.rewards.combine import CombinedReward
from minitoddler.rl.rollout import SamplingConfig
from minitoddler.sft import Example
from minitoddler.tokenizer import load_tokenizer
from tiny_chat_model import make_model_dir


class CountSyncs(TorchDispatchMode):
    """Counts the reads of a device value back to the host (`aten._local_scalar_dense`)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def reads(fn) -> int:
    with CountSyncs() as counter:
        fn()
    return counter.reads


@pytest.fixture(scope="module")
def model_dir(shared_data, tmp_path_factory):
    return make_model_dir(shared_data, tmp_path_factory.mktemp("syncs"))


FP32 = resolve_dtype("fp32", "cpu")
ONE = Dist()


def test_an_sft_step_reads_back_per_step_not_per_micro_batch(model_dir):
    model = load_model(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    batch = [Example(torch.randint(3, 500, (n,)).tolist(), [0] * (n // 2) + [1] * (n - n // 2))
             for n in (9, 12, 7, 15, 10, 11, 8, 13)]

    def step(device_batch):
        cfg = train_sft.SFTConfig(batch_size=8, device_batch_size=device_batch)
        return reads(lambda: train_sft.train_step(model, optimizer, batch, cfg, 0, ONE, "cpu", FP32, 0))

    assert step(8) == step(2)  # the loss (non-finite check), the gradient norm, AdamW on the CPU


def test_a_grpo_update_reads_back_per_step_not_per_micro_batch(model_dir):
    tokenizer = load_tokenizer(model_dir)
    cfg = train_rl.rl_config(generations=4, max_new_tokens=6, max_prompt_len=24, lora_rank=4, dtype="fp32")
    learner = train_rl.setup_learner(cfg, load_model(model_dir), ONE, torch.device("cpu"), FP32)
    reward = CombinedReward([("len", 1.0, type("Len", (), {"score": lambda self, p, r: torch.tensor(
        [float(len(x)) for x in r])})())])
    sampling = SamplingConfig("dialogue", None, 4, 24, 6)
    batch = train_rl.rollout_and_score(learner, tokenizer, reward, ["where is the ball ?", "hi there"], sampling,
                                       cfg, seed=0, pad_id=0)

    def update(device_batch):
        run = dataclasses.replace(cfg, device_batch_size=device_batch)
        return reads(lambda: train_rl.grpo_update(learner, dataclasses.replace(batch), run, ONE, 0))

    assert update(8) == update(2)


def test_decoding_reads_the_stop_flag_every_k_tokens(model_dir):
    model = load_model(model_dir)
    prompts = [[5, 6, 7], [8, 9]]
    short = reads(lambda: generate(model, prompts, 8, stop_check_every=8))
    long = reads(lambda: generate(model, prompts, 24, stop_check_every=8))
    assert long - short == 2  # 16 more tokens, two more checks (not 16)
    every = reads(lambda: generate(model, prompts, 24, stop_check_every=1))
    assert every - long == 24 - 3
    assert generate(model, prompts, 24, stop_check_every=8) == generate(model, prompts, 24, stop_check_every=1)
