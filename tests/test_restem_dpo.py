"""RestEM and DPO+: their losses by hand, sample selection and pairing, the schedule catch-up, short runs."""

import json
import math
import random
from collections import defaultdict

import pytest
import torch

from vineppo.episodes import Episode
from vineppo.losses import KLPenalty, MiniBatchTotals, dpo_plus_loss, nll_loss, token_weights
from vineppo.preference import make_pairs
from vineppo.restem import select_correct
from vineppo.tasks.base import Problem
from vineppo.trainer import catch_up, linear_warmup_decay

PROBLEM = Problem("p", "", "", "")


def episode(prompt_index: int, reward: float, tag: int = 0) -> Episode:
    return Episode(prompt_index, PROBLEM, [1], [tag + 3], [0.0], "stop", reward=reward)


def test_token_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    totals = MiniBatchTotals(tokens=6, sequences=4)  # this micro-batch is half of its mini-batch
    expected = torch.tensor([[1 / 6, 1 / 6, 0], [1 / 6, 0, 0]])
    assert torch.allclose(token_weights(mask, "token_mean", totals), expected)
    # each response's token-mean (1/2 per token, 1 per token) averaged over the mini-batch's 4 responses
    expected = torch.tensor([[1 / 8, 1 / 8, 0], [1 / 4, 0, 0]])
    assert torch.allclose(token_weights(mask, "sequence_mean", totals), expected)


def test_nll_loss_and_its_gradient_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9]])).requires_grad_(True)
    weights = torch.tensor([[0.5, 0.5, 0.0]])
    loss, kl = nll_loss(logp, logp.detach(), logp.detach(), weights, KLPenalty(0.0))
    assert loss.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(4))
    assert kl.item() == pytest.approx(0.0)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.5, -0.5, 0.0])


def dpo_plus_reference(chosen, rejected, chosen_ref, rejected_ref, beta, lam):
    """Pal et al.'s DPOP loss written out with floats."""
    z = beta * ((chosen - chosen_ref) - (rejected - rejected_ref) - lam * max(0.0, chosen_ref - chosen))
    return math.log1p(math.exp(-z))


@pytest.mark.parametrize("lam", [0.0, 2.0, 50.0])
def test_dpo_plus_loss_matches_the_formula(lam):
    values = [(-2.0, -3.0, -1.5, -2.0), (-1.0, -4.0, -1.5, -3.5), (-0.2, -0.1, -0.3, -0.4)]
    tensors = [torch.tensor(column) for column in zip(*values)]
    out = dpo_plus_loss(*tensors, beta=0.1, lam=lam)
    expected = [dpo_plus_reference(*row, beta=0.1, lam=lam) for row in values]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    # by hand, first pair: chosen log-ratio -0.5, rejected -1.0, the chosen response fell 0.5 below the reference
    assert out.margins[0].item() == pytest.approx(0.1 * 0.5)
    assert out.chosen_drop.tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_dpo_plus_penalty_only_acts_when_the_chosen_response_falls_below_the_reference():
    chosen = torch.tensor([-1.0, -2.0], requires_grad=True)  # above, below its reference (-1.5)
    out = dpo_plus_loss(chosen, torch.tensor([-3.0, -3.0]), torch.tensor([-1.5, -1.5]), torch.tensor([-3.0, -3.0]),
                        beta=1.0, lam=50.0)
    out.losses.sum().backward()
    plain = torch.tensor([-1.0, -2.0], requires_grad=True)
    dpo = dpo_plus_loss(plain, torch.tensor([-3.0, -3.0]), torch.tensor([-1.5, -1.5]), torch.tensor([-3.0, -3.0]),
                        beta=1.0, lam=0.0)
    dpo.losses.sum().backward()
    assert chosen.grad[0].item() == pytest.approx(plain.grad[0].item())  # no penalty above the reference
    assert chosen.grad[1].item() < 50 * plain.grad[1].item() < 0  # pushed up much harder below it


def test_select_correct_keeps_correct_samples_up_to_the_cap():
    eps = [episode(0, 1.0, 0), episode(0, 0.0, 1), episode(0, 1.0, 2), episode(0, 1.0, 3), episode(1, 0.0, 4)]
    assert [e.response_ids[0] - 3 for e in select_correct(eps, max_per_prompt=2)] == [0, 2]
    assert [e.response_ids[0] - 3 for e in select_correct(eps, max_per_prompt=10)] == [0, 2, 3]
    assert select_correct([episode(0, 0.0), episode(1, 0.0)], max_per_prompt=10) == []


def test_pairs_are_disjoint_correct_incorrect_within_a_prompt():
    eps = [
        episode(0, 1.0, 0), episode(0, 0.0, 1), episode(0, 1.0, 2), episode(0, 1.0, 3),  # 3 correct, 1 wrong
        episode(1, 1.0, 4), episode(1, 1.0, 5),  # all correct: no pair
        episode(2, 0.0, 6), episode(2, 0.0, 7),  # all wrong: no pair
        episode(3, 0.0, 8), episode(3, 1.0, 9), episode(3, 0.0, 10), episode(3, 1.0, 11),  # 2 and 2
    ]
    pairs = make_pairs(eps, random.Random(0))
    assert len(pairs) == 1 + 2
    used = [id(e) for pair in pairs for e in pair]
    assert len(used) == len(set(used))
    for chosen, rejected in pairs:
        assert chosen.prompt_index == rejected.prompt_index
        assert chosen.reward == 1.0 and rejected.reward == 0.0


def test_catch_up_moves_the_schedule_to_the_iteration_boundary():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, warmup_steps=0, total_steps=10)
    optimizer.step()
    scheduler.step()  # one step of an iteration planned for five
    catch_up(scheduler, 5)
    assert scheduler.last_epoch == 5 and scheduler.get_last_lr()[0] == pytest.approx(0.5)
    catch_up(scheduler, 5)  # a PPO-family iteration has already taken its steps: nothing moves
    assert scheduler.last_epoch == 5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["restem", "dpo_plus"])
def test_two_iterations_run_and_log_their_update(algorithm_runs, name, tmp_path_factory):
    records, vine = algorithm_runs[name], algorithm_runs["vineppo"]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[0]["eval/accuracy"] == vine[0]["eval/accuracy"]  # the same SFT model
    assert records[1]["train/reward"] == vine[1]["train/reward"]  # the same first samples
    for r in records[1:]:
        assert r["tokens/mc"] == 0
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    first = records[1]
    if name == "restem":
        assert 0.0 <= first["restem/kept"] <= 1.0
        assert first["restem/kept"] == pytest.approx(first["train/accuracy"])  # the cap of 10 never binds here
    else:  # one pair per correct/incorrect couple within a prompt's samples: sum of min(correct, wrong)
        logged = tmp_path_factory.getbasetemp() / f"run-{name}" / "samples.jsonl"
        samples = [json.loads(line) for line in logged.read_text().splitlines()]
        by_prompt = defaultdict(list)
        for sample in samples:
            if sample["iteration"] == 1:
                by_prompt[sample["prompt"]].append(sample["reward"] >= 1.0)
        assert sum(len(v) for v in by_prompt.values()) == 8  # every sample of the iteration was logged
        expected = sum(min(sum(v), len(v) - sum(v)) for v in by_prompt.values())
        assert first["dpo/pairs"] == expected
        assert "advantage/mean" in first
