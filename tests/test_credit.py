"""VinePPO credit: hand-computed advantages, prefix deduplication, and an MC toy whose true values are known."""

import math

import pytest
import torch

from vineppo.credit.vine import spread_over_tokens, step_advantages, vine_credit
from vineppo.engine.base import Completion, SamplingParams
from vineppo.episodes import Episode
from vineppo.tasks.base import Grade, Problem
from fakes import FakeTaskBase

# Toy environment over a 4-symbol vocabulary: 0 = "H", 1 = "T", 2 = "\n", 3 = eos.
# A response is 3 lines of one coin flip each ("H\nT\nH\n" + eos); reward 1 iff at least 2 heads.
VOCAB = {0: "H", 1: "T", 2: "\n", 3: ""}
P_HEADS = 0.3
LINES = 3
PROBLEM = Problem(id="coin", prompt="", solution="", answer="")


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


class CoinTask(FakeTaskBase):
    name = "coin"

    def grade(self, problem, response):
        return Grade(float(response.count("H") >= 2), parsed=True)


class CoinEngine:
    """Continues a prefix of the toy process; the prompt is the single token [2]."""

    def __init__(self):
        self.calls = []

    def generate(self, prefixes, n, params, generator=None, on_progress=None, budgets=None):
        self.calls.append([list(p) for p in prefixes])
        self.budgets = budgets
        out = []
        for prefix in prefixes:
            done_lines = decode(prefix[1:]).count("\n")
            rows = []
            for _ in range(n):
                ids = []
                for _ in range(LINES - done_lines):
                    heads = torch.rand((), generator=generator).item() < P_HEADS
                    ids += [0 if heads else 1, 2]
                ids.append(3)
                rows.append(Completion(ids, [0.0] * len(ids), "stop"))
            out.append(rows)
        return out


def true_value(heads_so_far, lines_left):
    need = max(0, 2 - heads_so_far)
    return sum(
        math.comb(lines_left, h) * P_HEADS**h * (1 - P_HEADS) ** (lines_left - h)
        for h in range(need, lines_left + 1)
    )


def make_episode(flips, prompt_index=0):
    ids = []
    for heads in flips:
        ids += [0 if heads else 1, 2]
    ids.append(3)
    reward = float(sum(flips) >= 2)
    return Episode(prompt_index, PROBLEM, [2], ids, [0.0] * len(ids), "stop", reward=reward, parsed=True)


def test_step_advantages_by_hand():
    assert step_advantages([0.5, 0.25, 1.0], reward=1.0) == [-0.25, 0.75, 0.0]
    assert step_advantages([0.5, 0.25, 1.0], reward=0.0) == [-0.25, 0.75, -1.0]
    assert step_advantages([0.4], reward=1.0) == pytest.approx([0.6])  # a one-step response


def test_advantages_telescope_to_reward_minus_initial_value():
    values = [0.3, 0.9, 0.1, 0.6]
    assert sum(step_advantages(values, 1.0)) == pytest.approx(1.0 - 0.3)


def test_every_token_of_a_step_gets_its_advantage():
    assert spread_over_tokens([1.0, -2.0, 3.0], [0, 2, 3], 6) == [1.0, 1.0, -2.0, 3.0, 3.0, 3.0]


def test_vine_credit_dedupes_prefixes_and_fills_episodes():
    engine = CoinEngine()
    episodes = [make_episode([True, False, True]), make_episode([True, True, False]), make_episode([False] * 3)]
    stats = vine_credit(episodes, engine, CoinTask(), decode, k=4, params=SamplingParams(), max_value_steps=None,
                        generator=torch.Generator().manual_seed(0))
    (prefixes,) = engine.calls
    assert engine.budgets == [64 - (len(p) - 1) for p in prefixes]  # max_new_tokens minus the response so far
    # states: the prompt (shared by all 3), "H\n" (shared by the first two), "H\nT\n", "H\nH\n", "T\n", "T\nT\n"
    assert len(prefixes) == stats.num_states == 6
    assert len(set(map(tuple, prefixes))) == 6
    for episode in episodes:
        assert episode.step_starts == [0, 2, 4]
        assert len(episode.step_values) == 3
        assert len(episode.advantages) == len(episode.response_ids)
        # a state with 2 heads already is worth exactly 1 whatever the rollouts do
    assert episodes[1].step_values[2] == 1.0
    assert episodes[1].advantages[-1] == 0.0  # R - V = 1 - 1 on the last step
    assert stats.mc_tokens == sum(4 * (LINES - i) * 2 + 4 for i in (0, 1, 2, 2, 1, 2))


def test_mc_values_are_unbiased_and_converge_to_the_true_values():
    """Averaged over many independent estimates, V-hat at each boundary equals the exact value, and the
    advantage of each step equals its exact TD error within the Monte Carlo error."""
    flips = [True, False, False]
    truth = [true_value(0, 3), true_value(1, 2), true_value(1, 1)]
    exact_adv = step_advantages(truth, reward=0.0)
    generator = torch.Generator().manual_seed(1)
    repeats, k = 400, 3
    value_sums = [0.0] * 3
    adv_sums = [0.0] * 3
    for _ in range(repeats):
        episode = make_episode(flips)
        vine_credit([episode], CoinEngine(), CoinTask(), decode, k=k, params=SamplingParams(),
                    max_value_steps=None, generator=generator)
        for i in range(3):
            value_sums[i] += episode.step_values[i]
            adv_sums[i] += episode.advantages[episode.step_starts[i]]
    for i in range(3):
        stderr = math.sqrt(truth[i] * (1 - truth[i]) / (k * repeats))
        assert abs(value_sums[i] / repeats - truth[i]) < 4 * stderr + 1e-9
        assert abs(adv_sums[i] / repeats - exact_adv[i]) < 8 * stderr + 1e-9


def test_cap_on_value_steps_merges_the_tail():
    engine = CoinEngine()
    episode = make_episode([True, True, False])
    vine_credit([episode], engine, CoinTask(), decode, k=2, params=SamplingParams(), max_value_steps=2)
    assert episode.step_starts == [0, 2]
    assert len(engine.calls[0]) == 2
    tail = episode.advantages[2:]
    assert tail == [1.0 - episode.step_values[1]] * len(tail)


def test_a_response_cut_off_at_the_length_limit_earns_nothing():
    from vineppo.episodes import grade_responses

    full = "H\nH\nT\n"
    stopped, cut_off = grade_responses(CoinTask(), [PROBLEM, PROBLEM], [full, full], ["stop", "length"])
    assert stopped.reward == 1.0
    assert cut_off.reward == 0.0
