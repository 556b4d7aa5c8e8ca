"""The PPO update: micro-batching does not change the gradient; the ratio starts at exactly 1."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vineppo.config import AlgoConfig, TrainConfig
from vineppo.episodes import Episode
from vineppo.tasks.base import Problem
from vineppo.parallel.backend import Trained
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


def one_step(model, micro_batch_size, whiten=True, aggregation="token_mean", whiten_scope="iteration", eps=None,
             kl_coef=0.1, group_by_length=False):
    """The weights' change from one SGD step (lr 1) of `ppo_update` on `eps` (default: `episodes()`)."""
    policy = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8,
                        micro_batch_size=micro_batch_size, epochs=1, max_grad_norm=1e9, group_by_length=group_by_length)
    algo = AlgoConfig(kl_coef=kl_coef, loss_aggregation=aggregation, whiten_scope=whiten_scope)
    batches, _ = prepare(policy, reference, eps or episodes(), pad_id=0, micro_batch_size=micro_batch_size,
                         temperature=0.7, whiten_advantages=whiten, device=torch.device("cpu"),
                         group_by_length=group_by_length)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    # perturb first so the KL term has a gradient too
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=None))
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo_update(Trained(policy, optimizer, scheduler), batches, algo, train, 0.7, torch.Generator().manual_seed(0),
                       whiten=True)
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
    stats = ppo_update(Trained(policy, optimizer, scheduler), batches, AlgoConfig(), train, 1.0, torch.Generator())
    assert stats["loss/clipfrac"] == 0.0
    assert stats["loss/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["loss/kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference


def test_a_non_finite_gradient_stops_before_the_optimizer_step(model):
    from vineppo.parallel.stepping import NonFiniteError

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
        ppo_update(Trained(policy, optimizer, scheduler), batches, AlgoConfig(), train, 1.0, torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_mini_batch_whitening_whitens_each_step_from_the_raw_advantages(model):
    """whiten_scope "mini_batch" (official): every optimizer step trains on its own mini-batch's advantages
    whitened (mean 0, unbiased std 1 over its response tokens), computed from the raw advantages each epoch."""
    from vineppo.losses import masked_mean_var
    from vineppo.update import minibatch_steps, whitened

    policy = copy.deepcopy(model)
    batches, _ = prepare(policy, policy, episodes(), pad_id=0, micro_batch_size=2, temperature=1.0,
                         whiten_advantages=False, device=torch.device("cpu"))
    raw = [b.tokens.advantages.clone() for b in batches]
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=4, micro_batch_size=2,
                        epochs=2)
    seen = []

    def micro_loss(trained, b, totals):
        seen.append(b.tokens)
        return (trained.model.embed_tokens.weight * 0).sum(), {}

    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    minibatch_steps(Trained(policy, optimizer, scheduler), batches, train, torch.Generator().manual_seed(0), micro_loss,
                    per_mini_batch=whitened)
    assert len(seen) == 8  # 2 epochs x 2 steps x 2 micro-batches
    for first in range(0, 8, 2):
        step = seen[first : first + 2]
        adv = torch.cat([t.advantages.flatten() for t in step])
        mask = torch.cat([t.response_mask.flatten() for t in step])
        mean, var = masked_mean_var(adv, mask, unbiased=True)
        assert mean.item() == pytest.approx(0.0, abs=1e-6) and var.item() == pytest.approx(1.0, abs=1e-5)
    assert all(torch.equal(b.tokens.advantages, r) for b, r in zip(batches, raw))  # the stored ones stay raw


def test_with_one_mini_batch_per_iteration_the_two_whitening_scopes_agree(model):
    torch.manual_seed(1)
    per_iteration, _ = one_step(model, micro_batch_size=4, whiten=True)
    torch.manual_seed(1)
    per_mini_batch, _ = one_step(model, micro_batch_size=4, whiten=False, whiten_scope="mini_batch")
    torch.manual_seed(1)
    none, _ = one_step(model, micro_batch_size=4, whiten=False)
    for a, b in zip(per_iteration, per_mini_batch):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(per_iteration, none))


def test_a_micro_batch_above_the_ratio_threshold_contributes_no_gradient(model):
    """algo.ratio_threshold (official 10): the loss of a micro-batch whose mean ratio pi / pi_old exceeds it is
    multiplied by 0, and the skipped micro-batches are counted (loss/skipped, per optimizer step)."""
    from vineppo.update import forward_logprobs

    old_policy = copy.deepcopy(model)
    batches, _ = prepare(old_policy, old_policy, episodes(), pad_id=0, micro_batch_size=1, temperature=1.0,
                         whiten_advantages=False, device=torch.device("cpu"))  # a micro-batch = an episode
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        ratios = []
        for b in batches:
            ratio = torch.exp(forward_logprobs(moved, b.tokens, 1.0) - b.old_logp)
            ratios.append(((ratio * b.tokens.response_mask).sum() / b.tokens.response_mask.sum()).item())
    threshold = sorted(ratios)[len(ratios) // 2]  # about half the micro-batches above it
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8, micro_batch_size=1,
                        epochs=1, max_grad_norm=1e9)

    def update(algo):
        policy = copy.deepcopy(moved)
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        stats = ppo_update(Trained(policy, optimizer, scheduler), batches, algo, train, 1.0, torch.Generator().manual_seed(0))
        return [p.detach() - q for p, q in zip(policy.parameters(), moved.parameters())], stats

    _, stats = update(AlgoConfig(kl_coef=0.0, ratio_threshold=threshold))
    assert stats["loss/skipped"] == sum(r > threshold for r in ratios) > 0
    everything, stats = update(AlgoConfig(kl_coef=0.0, ratio_threshold=min(ratios) / 2))
    assert stats["loss/skipped"] == len(batches)
    assert all(d.abs().max() == 0 for d in everything)
    nothing, stats = update(AlgoConfig(kl_coef=0.0))
    assert stats["loss/skipped"] == 0 and any(d.abs().max() > 0 for d in nothing)


def test_group_baselines_are_not_whitened_unless_asked():
    """A GRPO/RLOO group whose rewards are all equal has advantage 0 ("no signal"): whitening across groups would
    move it to -mean/std. The PPO family's own practice: vineppo and ppo whiten (official), grpo and rloo not."""
    from vineppo.algorithms import whitens

    assert whitens(AlgoConfig(name="vineppo")) and whitens(AlgoConfig(name="ppo"))
    assert not whitens(AlgoConfig(name="grpo")) and not whitens(AlgoConfig(name="rloo"))
    assert whitens(AlgoConfig(name="grpo", whiten_advantages=True))
    assert not whitens(AlgoConfig(name="vineppo", whiten_advantages=False))


def test_each_epoch_draws_its_mini_batches_from_shuffled_episodes(model):
    """The official trainer shuffles episodes, not fixed micro-batches: each epoch visits every episode once, in
    mini-batches whose make-up changes from epoch to epoch, and micro-batches are recombined from episodes."""
    from vineppo.update import minibatch_steps

    policy = copy.deepcopy(model)
    eps = episodes()
    batches, _ = prepare(policy, policy, eps, pad_id=0, micro_batch_size=2, temperature=1.0,
                         whiten_advantages=False, device=torch.device("cpu"))
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=4, micro_batch_size=2,
                        epochs=2)
    seen = []  # per micro-batch, the episodes (by index) it holds

    def micro_loss(trained, b, totals):
        rows = []
        for ids, mask in zip(b.tokens.input_ids.tolist(), b.tokens.attention_mask.tolist()):
            rows.append(next(i for i, e in enumerate(eps) if ids[: sum(mask)] == e.prompt_ids + e.response_ids))
        seen.append(rows)
        return (trained.model.embed_tokens.weight * 0).sum(), {}

    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    minibatch_steps(Trained(policy, optimizer, scheduler), batches, train, torch.Generator().manual_seed(0), micro_loss)
    epochs = [sorted(i for micro in seen[e * 4 : e * 4 + 4] for i in micro) for e in range(2)]
    assert epochs == [list(range(8))] * 2  # every episode once per epoch
    steps = [frozenset(seen[s][0:2] + seen[s + 1][0:2]) for s in range(0, 8, 2)]
    assert {steps[0], steps[1]} != {steps[2], steps[3]}  # epoch 2 regroups them
    prepared = {frozenset((2 * j, 2 * j + 1)) for j in range(4)}  # how prepare cut the micro-batches
    assert any(frozenset(micro) not in prepared for micro in seen)


def test_grouping_by_length_leaves_the_update_unchanged(model):
    """Fails if `train.group_by_length` loses or repeats a row, or a micro-batch is normalised by its own totals."""
    torch.manual_seed(1)
    drawn, _ = one_step(model, micro_batch_size=2)
    torch.manual_seed(1)
    grouped, _ = one_step(model, micro_batch_size=2, group_by_length=True)
    for a, b in zip(drawn, grouped):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert any(d.abs().max() > 0 for d in drawn)


def test_grouping_by_length_prepares_the_same_rows_in_the_same_order(model):
    plain, _ = prepare(model, model, episodes(), pad_id=0, micro_batch_size=2, temperature=0.7,
                       whiten_advantages=True, device=torch.device("cpu"))
    grouped, _ = prepare(model, model, episodes(), pad_id=0, micro_batch_size=2, temperature=0.7,
                         whiten_advantages=True, device=torch.device("cpu"), group_by_length=True)
    assert len(plain) == len(grouped) == 4
    for a, b in zip(plain, grouped):
        mask = a.tokens.response_mask
        assert torch.equal(a.tokens.input_ids, b.tokens.input_ids) and torch.equal(mask, b.tokens.response_mask)
        assert torch.allclose(a.tokens.advantages, b.tokens.advantages, atol=1e-6)
        assert torch.allclose(a.old_logp * mask, b.old_logp * mask, atol=1e-5)
        assert torch.allclose(a.ref_logp * mask, b.ref_logp * mask, atol=1e-5)


def test_grouping_by_length_cuts_each_drawn_mini_batch_after_sorting_it(model):
    """The same mini-batches as without, each cut into micro-batches in order of length, so they pad less (the
    padded positions counted as `padded_tokens`)."""
    from vineppo.update import minibatch_steps

    def micro_batch_lengths(group_by_length):
        batches, _ = prepare(model, model, episodes(), pad_id=0, micro_batch_size=2, temperature=1.0,
                             whiten_advantages=False, device=torch.device("cpu"), group_by_length=group_by_length)
        train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=4, micro_batch_size=2,
                            epochs=2, group_by_length=group_by_length)
        seen = []  # per micro-batch, its rows' lengths

        def micro_loss(trained, b, totals):
            seen.append(b.tokens.attention_mask.sum(-1).tolist())
            return (trained.model.embed_tokens.weight * 0).sum(), {}

        policy = copy.deepcopy(model)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        stats = minibatch_steps(Trained(policy, optimizer, scheduler), batches, train,
                                torch.Generator().manual_seed(0), micro_loss)
        assert stats["padded_tokens"] == sum(len(m) * max(m) for m in seen)
        assert stats["tokens"] == sum(sum(m) for m in seen)
        return seen

    drawn, grouped = micro_batch_lengths(False), micro_batch_lengths(True)
    steps = range(0, len(drawn), 2)
    assert [sorted(drawn[s] + drawn[s + 1]) for s in steps] == [grouped[s] + grouped[s + 1] for s in steps]
    padded = [sum(len(m) * max(m) for m in seen) for seen in (drawn, grouped)]
    assert padded[1] < padded[0]


def test_row_tokens_counts_every_token_batch_of_a_row(model):
    from vineppo.episodes import collate, row_tokens, split_rows
    from vineppo.preference import PairBatch

    eps = episodes(4)
    pairs = PairBatch(collate(eps[:2], 0), collate(eps[2:], 0), torch.zeros(2), torch.zeros(2))
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in eps]
    assert [row_tokens(r) for r in split_rows(pairs)] == [lengths[0] + lengths[2], lengths[1] + lengths[3]]


def test_split_rows_and_join_rows_round_trip(model):
    from vineppo.episodes import join_rows, split_rows

    policy = copy.deepcopy(model)
    (batch,), _ = prepare(policy, policy, episodes(4), pad_id=0, micro_batch_size=4, temperature=1.0,
                          whiten_advantages=False, device=torch.device("cpu"))
    rows = split_rows(batch)
    lengths = batch.tokens.attention_mask.sum(-1).tolist()
    assert len(rows) == 4 and [r.tokens.input_ids.shape[1] for r in rows] == lengths
    joined = join_rows(rows)
    for name in ("input_ids", "attention_mask", "response_mask", "advantages", "sample_logprobs"):
        assert torch.equal(getattr(joined.tokens, name), getattr(batch.tokens, name)), name
    assert torch.equal(joined.old_logp * joined.tokens.response_mask, batch.old_logp * batch.tokens.response_mask)


def test_trained_rollouts_join_the_samples_mini_batches_without_adding_optimizer_steps(model):
    """VinePPO's train_rollouts: 8 samples and 24 rollout episodes take the samples' 2 steps an epoch (so the
    learning-rate schedule in steps is unchanged), each step 4x the samples' micro-batches, every episode once an
    epoch."""
    from vineppo.update import micro_batches_with_rollouts, minibatch_steps

    samples, rollouts = episodes(8), episodes(24, seed=1)
    for episode in rollouts:
        episode.rollout = True
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=4, micro_batch_size=2,
                        epochs=2)
    assert micro_batches_with_rollouts(samples, train) == 2
    per_step = micro_batches_with_rollouts(samples + rollouts, train)
    assert per_step == 8
    policy = copy.deepcopy(model)
    seen, steps = [], []

    def micro_loss(trained, b, totals):
        seen.append(len(b.tokens.input_ids))
        return (trained.model.embed_tokens.weight * 0).sum(), {}

    for eps, micro in ((samples, None), (samples + rollouts, per_step)):
        batches, _ = prepare(policy, policy, eps, pad_id=0, micro_batch_size=2, temperature=1.0,
                             whiten_advantages=False, device=torch.device("cpu"))
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        seen.clear()
        taken = []
        minibatch_steps(Trained(policy, optimizer, scheduler), batches, train, torch.Generator().manual_seed(0),
                        micro_loss, on_step=lambda: taken.append(1), micro_batches=micro)
        steps.append(len(taken))
        assert sum(seen) == 2 * len(eps)  # every episode once an epoch
    assert steps == [4, 4]


def test_the_learning_rate_logged_is_the_mean_of_the_rates_the_steps_took(model):
    """An iteration's `lr` is what its steps trained at (the bench's cost table reads it to show a warmup that
    holds a slow method's rate down), not the rate after its last step."""
    from vineppo.update import minibatch_steps

    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=4, micro_batch_size=2,
                        epochs=2)
    policy = copy.deepcopy(model)
    batches, _ = prepare(policy, policy, episodes(8), pad_id=0, micro_batch_size=2, temperature=1.0,
                         whiten_advantages=False, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step + 1)  # 0.1, 0.2, 0.3, 0.4, ...

    def micro_loss(trained, b, totals):
        return (trained.model.embed_tokens.weight * 0).sum(), {}

    trained = Trained(policy, optimizer, scheduler)
    stats = minibatch_steps(trained, batches, train, torch.Generator().manual_seed(0), micro_loss)
    assert stats["lr"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)  # 2 steps an epoch, 2 epochs
    nothing = minibatch_steps(trained, [], train, torch.Generator().manual_seed(0), micro_loss)
    assert nothing["lr"] == pytest.approx(0.5)  # no step taken: the schedule's current rate


def test_dropping_zero_advantages_cuts_each_response_after_its_last_nonzero_one():
    from vineppo.update import dropped_metrics, nonzero_advantage_part

    shapes = [[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0], [0.0, 0.0, 0.2]]
    full = []
    for i, advantages in enumerate(shapes):
        episode = Episode(i, PROBLEM, [1, 2], [3 + j for j in range(len(advantages))], [-0.1 * j for j in
                          range(len(advantages))], "stop")
        episode.advantages = advantages
        full.append(episode)
    kept = nonzero_advantage_part(full)
    assert [e.prompt_index for e in kept] == [0, 2, 3]
    assert [e.response_ids for e in kept] == [[3, 4], [3], [3, 4, 5]]
    assert [e.sample_logprobs for e in kept] == [[0.0, -0.1], [0.0], [0.0, -0.1, -0.2]]
    assert [e.advantages for e in kept] == [[0.0, 0.5], [-1.0], [0.0, 0.0, 0.2]]
    assert full[0].response_ids == [3, 4, 5, 6]  # the episodes themselves are not cut
    assert dropped_metrics(full, kept) == {"update/dropped_episodes": 0.25, "update/dropped_tokens": 1 - 6 / 11}


def test_dropping_zero_advantages_leaves_the_policy_gradient_but_for_the_token_mean(model):
    """Without whitening and KL, one step on the nonzero-advantage part moves the weights by the full step times
    (all response tokens / tokens kept), the token mean's other denominator: fails if a cut changed a kept
    token's log-prob or a nonzero advantage were left out."""
    from vineppo.update import nonzero_advantage_part

    full = episodes(8, seed=3)
    for i, episode in enumerate(full):
        if i % 3 == 0:
            episode.advantages = [0.0] * len(episode.advantages)
        elif len(episode.advantages) > 2:
            episode.advantages[-2:] = [0.0, 0.0]
    kept = nonzero_advantage_part(full)
    assert 0 < len(kept) < len(full)

    steps = []
    for eps in (full, kept):
        torch.manual_seed(1)  # one_step's perturbation of the weights, alike for both
        steps.append(one_step(model, micro_batch_size=4, whiten=False, eps=eps, kl_coef=0.0)[0])
    tokens = [sum(len(e.response_ids) for e in eps) for eps in (full, kept)]
    assert tokens[1] < tokens[0]
    for whole, part in zip(*steps):
        assert torch.allclose(whole * tokens[0], part * tokens[1], atol=1e-5, rtol=1e-4)  # float32 sums
    assert any(d.abs().max() > 0 for d in steps[1])
