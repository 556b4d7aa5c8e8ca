"""The PPO update: micro-batching does not change the gradient; the ratio starts at exactly 1."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vineppo.config import AlgoConfig, TrainConfig
from vineppo.episodes import Episode
from vineppo.tasks.base import Problem
from vineppo.update import ppo_update, prepare

PROBLEM = Problem("p", "", "", "")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def episodes(count=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        prompt = torch.randint(3, 16, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(3, 16, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        ep = Episode(i // 2, PROBLEM, prompt, response, [0.0] * len(response), "stop")
        ep.advantages = torch.randn(len(response), generator=g).tolist()
        out.append(ep)
    return out


def one_step(model, micro_batch_size, whiten=True, aggregation="token_mean"):
    policy = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8,
                        micro_batch_size=micro_batch_size, epochs=1, max_grad_norm=1e9)
    algo = AlgoConfig(kl_coef=0.1, loss_aggregation=aggregation)
    batches, _ = prepare(policy, reference, episodes(), pad_id=0, micro_batch_size=micro_batch_size,
                         temperature=0.7, whiten_advantages=whiten, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    # perturb first so the KL term has a gradient too
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=None))
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo_update(policy, optimizer, scheduler, batches, algo, train, 0.7, torch.Generator().manual_seed(0))
    return [p.detach() - b for p, b in zip(policy.parameters(), before)], stats


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_micro_batching_leaves_the_update_unchanged(model, aggregation):
    """Fails if a micro-batch is normalised by its own token or sequence count instead of its mini-batch's."""
    torch.manual_seed(1)
    full, _ = one_step(model, micro_batch_size=8, aggregation=aggregation)
    for micro in (1, 2, 4):
        torch.manual_seed(1)
        split, _ = one_step(model, micro_batch_size=micro, aggregation=aggregation)
        for a, b in zip(full, split):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert any(d.abs().max() > 0 for d in full)


def test_the_aggregation_modes_give_different_updates(model):
    torch.manual_seed(1)
    token_mean, _ = one_step(model, micro_batch_size=4)
    torch.manual_seed(1)
    sequence_mean, _ = one_step(model, micro_batch_size=4, aggregation="sequence_mean")
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(token_mean, sequence_mean))


def test_ratio_starts_at_one_and_gap_to_sampler_is_logged(model):
    policy = copy.deepcopy(model)
    batches, gap = prepare(policy, policy, episodes(), pad_id=0, micro_batch_size=4, temperature=1.0,
                           whiten_advantages=False, device=torch.device("cpu"))
    assert gap["logprob_gap/sampler_vs_trainer"] > 0  # the fake sampler log-probs are 0, the model's are not
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8, micro_batch_size=4,
                        epochs=1)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    stats = ppo_update(policy, optimizer, scheduler, batches, AlgoConfig(), train, 1.0, torch.Generator())
    assert stats["loss/clipfrac"] == 0.0
    assert stats["loss/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["loss/kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference


def test_a_non_finite_gradient_stops_before_the_optimizer_step(model):
    from vineppo.stepping import NonFiniteError

    policy = copy.deepcopy(model)
    eps = episodes()
    eps[0].advantages[0] = float("inf")
    batches, _ = prepare(policy, policy, eps, pad_id=0, micro_batch_size=8, temperature=1.0,
                         whiten_advantages=False, device=torch.device("cpu"))
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8, micro_batch_size=8,
                        epochs=1)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = [p.detach().clone() for p in policy.parameters()]
    with pytest.raises(NonFiniteError, match="gradient norm is"):
        ppo_update(policy, optimizer, scheduler, batches, AlgoConfig(), train, 1.0, torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
