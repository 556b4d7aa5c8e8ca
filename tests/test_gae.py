"""PPO baseline: GAE against its closed form, the clipped value loss by hand, the value model, a short run."""

import json
import random
import shutil

import pytest
import torch
from transformers import AutoModelForTokenClassification

from vineppo.cli import main
from vineppo.config import TinyModelConfig
from vineppo.credit.gae import gae, outcome_rewards
from vineppo.credit.critic import explained_variance
from vineppo.losses import clipped_value_loss
from vineppo.models import build_char_tokenizer, build_tiny_model, load_value_model
from vineppo.runlog import read_metrics

from tiny import TINY


def closed_form(rewards, values, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, with V after the last token 0; plain Python floats."""
    n = len(values)
    nxt = values[1:] + [0.0]
    deltas = [rewards[t] + gamma * nxt[t] - values[t] for t in range(n)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


def test_gae_matches_the_closed_form():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 12)
        gamma, lam = rng.random(), rng.random()
        rewards = [rng.uniform(-1, 1) for _ in range(n)]
        values = [rng.uniform(-1, 1) for _ in range(n)]
        advantages, returns = gae(torch.tensor(rewards, dtype=torch.float64), torch.tensor(values, dtype=torch.float64),
                                  gamma, lam)
        expected = closed_form(rewards, values, gamma, lam)
        assert advantages.tolist() == pytest.approx(expected)
        assert returns.tolist() == pytest.approx([a + v for a, v in zip(expected, values)])


def test_gae_by_hand():
    values = torch.tensor([0.2, 0.5, 0.9])
    # gamma = lam = 1: every token's advantage is R - V_t, every return R.
    advantages, returns = gae(outcome_rewards(3, 1.0), values, 1.0, 1.0)
    assert advantages.tolist() == pytest.approx([0.8, 0.5, 0.1])
    assert returns.tolist() == pytest.approx([1.0, 1.0, 1.0])
    # lam = 0: one-step TD errors r_t + gamma V_{t+1} - V_t.
    advantages, _ = gae(outcome_rewards(3, 1.0), values, 0.5, 0.0)
    assert advantages.tolist() == pytest.approx([0.25 - 0.2, 0.45 - 0.5, 1.0 - 0.9])
    assert outcome_rewards(3, 0.7).tolist() == pytest.approx([0.0, 0.0, 0.7])


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.5]])
    values = torch.tensor([[0.5, 0.1, -0.5, 9.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    # token 0: V moved +0.5, clipped to 0.2 -> max(0.25, 0.64) = 0.64 (clipped branch)
    # token 1: inside the range -> max(0.81, 0.81) = 0.81
    # token 2: V moved -0.5 toward R = 0: clipped -0.2 -> max(0.25, 0.04) = 0.25 (unclipped branch)
    loss = clipped_value_loss(values, old, returns, mask, num_tokens=6, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 6)
    with pytest.raises(ValueError):
        clipped_value_loss(values, old, returns, mask, num_tokens=0, clip_range=0.2)


def test_value_model_from_a_causal_lm_and_back(tmp_path):
    tokenizer = build_char_tokenizer("0123456789+-*=\n ")
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    policy = build_tiny_model(cfg, tokenizer)
    policy.save_pretrained(tmp_path / "policy")
    value = load_value_model(tmp_path / "policy")
    assert torch.equal(value.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    assert value.score.bias.tolist() == [0.0]
    assert value.score.weight.std().item() == pytest.approx(1 / (32 + 1) ** 0.5, rel=0.5)
    ids = torch.tensor([[1, 4, 5, 6, 7]])
    assert value(input_ids=ids).logits.shape == (1, 5, 1)

    value.save_pretrained(tmp_path / "value")
    reloaded = load_value_model(tmp_path / "value")  # a trained head is kept, not re-initialised
    assert torch.equal(reloaded.score.weight, value.score.weight)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, value.eval()(input_ids=ids).logits)
    AutoModelForTokenClassification.from_pretrained(tmp_path / "value")

    # the new head is drawn from the run's seed, whatever the global random state: a PPO run is reproducible
    torch.manual_seed(123)
    same = load_value_model(tmp_path / "policy")
    assert torch.equal(same.score.weight, value.score.weight)
    assert not torch.equal(load_value_model(tmp_path / "policy", seed=1).score.weight, value.score.weight)


def test_explained_variance():
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(targets, targets, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(targets, 0.5), targets, mask) == pytest.approx(0.0)
    assert explained_variance(1.0 - targets, targets, mask) == pytest.approx(-3.0)  # error 2x the spread
    assert explained_variance(torch.rand(1, 5), torch.full((1, 5), 1e-7), mask) == 0.0  # constant targets


@pytest.mark.slow
def test_ppo_run_saves_the_value_network_and_resumes_exactly(tmp_path, sft_cache):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2", "algo.name=ppo"]) == 0
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for key in ("loss/value", "value/explained_variance", "value/grad_norm", "value/mc_mean", "loss/policy"):
        assert key in records[1], key
    assert records[1]["tokens/mc"] == 0
    for iteration in (1, 2):
        value = run / "checkpoints" / f"iter_{iteration:06d}" / "value"
        assert (value / "model.safetensors").is_file()
        assert json.loads((value / "config.json").read_text())["architectures"] == ["LlamaForTokenClassification"]

    shutil.rmtree(run / "checkpoints" / "iter_000002")
    (run / "checkpoints" / "latest").write_text("iter_000001\n")
    assert main(["train", "--resume", str(run)]) == 0
    resumed = read_metrics(run)
    timing_free = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert timing_free(resumed[2]) == pytest.approx(timing_free(records[2]), rel=1e-5, abs=1e-6)
