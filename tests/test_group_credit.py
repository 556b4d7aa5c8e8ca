"""GRPO / RLOO group baselines: hand-computed groups, edge cases, grouping, config switch, and short runs."""

import math
import random
import pytest

from vineppo.algorithms import METHODS
from vineppo.config import load_config
from vineppo.credit.group import grpo_advantages, group_credit, rloo_advantages
from vineppo.episodes import Episode
from vineppo.tasks.base import Problem
from vineppo.update import train_ppo

from tiny import TINY

PROBLEM = Problem(id="p", prompt="", solution="", answer="")


def episode(prompt_index, reward, num_tokens=3):
    return Episode(prompt_index, PROBLEM, [0], [1] * num_tokens, [0.0] * num_tokens, "stop", reward=reward)


def test_hand_computed_group():
    # mean 0.5; unbiased std sqrt((4 * 0.25) / 3) = 1/sqrt(3); (1 - 0.5) * sqrt(3) = 0.866..
    a = math.sqrt(3) / 2
    assert grpo_advantages([1, 0, 0, 1]) == pytest.approx([a, -a, -a, a], rel=1e-5)
    assert rloo_advantages([1, 0, 0, 1]) == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # one correct of three: RLOO 1 - 0 = 1 and 0 - 1/2; GRPO std = 1/sqrt(3), so (2/3) * sqrt(3) and -(1/3) * sqrt(3)
    assert rloo_advantages([1, 0, 0]) == pytest.approx([1, -0.5, -0.5])
    assert grpo_advantages([1, 0, 0]) == pytest.approx([2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)],
                                                       rel=1e-5)


@pytest.mark.parametrize("rewards", [[1.0] * 4, [0.0] * 4, [0.1] * 7, [0.3], [1.0]])
@pytest.mark.parametrize("estimator", [grpo_advantages, rloo_advantages])
def test_all_equal_rewards_and_single_samples_give_exactly_zero(estimator, rewards):
    assert estimator(rewards) == [0.0] * len(rewards)


def test_rloo_is_a_rescaled_mean_baseline():
    rng = random.Random(0)
    for n in range(2, 9):
        rewards = [rng.random() for _ in range(n)]
        mean = sum(rewards) / n
        assert rloo_advantages(rewards) == pytest.approx([n / (n - 1) * (r - mean) for r in rewards])


def test_grpo_matches_a_direct_computation():
    rng = random.Random(1)
    for n in range(2, 9):
        rewards = [float(rng.random() < 0.5) for _ in range(n - 1)] + [rng.random()]
        mean = sum(rewards) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
        assert grpo_advantages(rewards) == pytest.approx([(r - mean) / (std + 1e-6) for r in rewards])
    assert sum(grpo_advantages([1, 0, 0, 0, 1])) == pytest.approx(0, abs=1e-9)


def test_group_credit_groups_interleaved_episodes_by_prompt():
    # prompt 0: rewards [1, 0]; prompt 1: [0, 0, 1]; prompt 2: [1] alone; listed interleaved
    episodes = [episode(0, 1.0, 2), episode(1, 0.0), episode(2, 1.0), episode(1, 0.0, 4), episode(0, 0.0),
                episode(1, 1.0, 1)]
    metrics = group_credit(episodes, rloo_advantages)
    assert metrics == {"value/states": 3, "value/equal_reward_groups": 1 / 3}
    expected = [1.0, -0.5, 0.0, -0.5, -1.0, 1.0]
    for e, adv in zip(episodes, expected):
        assert e.advantages == pytest.approx([adv] * len(e.response_ids))
        assert e.step_starts == [0]
    assert [e.step_values[0] for e in episodes] == pytest.approx([0.5, 1 / 3, 1.0, 1 / 3, 0.5, 1 / 3])

    group_credit(episodes, grpo_advantages)
    assert [e.advantages[0] for e in episodes[::2]] == pytest.approx([1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                                                                     rel=1e-5)


def test_the_method_table_is_what_the_config_accepts():
    assert list(METHODS) == ["vineppo", "ppo", "grpo", "rloo", "restem", "dpo_plus"]
    for name in METHODS:
        assert load_config(None, [f"algo.name={name}"]).algo.name == name
    ppo_family = {name for name, m in METHODS.items() if m.update is train_ppo}
    assert ppo_family == {"vineppo", "ppo", "grpo", "rloo"}
    assert [name for name, m in METHODS.items() if m.credit is None] == ["restem", "dpo_plus"]


def test_algo_name_changes_nothing_else_in_the_config():
    dumps = {}
    for name in METHODS:
        tree = load_config(None, [*TINY, f"algo.name={name}"]).model_dump()
        assert tree["algo"].pop("name") == name
        dumps[name] = tree
    assert all(tree == dumps["vineppo"] for tree in dumps.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_runs_differ_from_vineppo_only_in_credit(algorithm_runs, name):
    group, vine = algorithm_runs[name], algorithm_runs["vineppo"]
    assert [r["iteration"] for r in group] == [0, 1, 2]
    first = group[1]
    assert first["tokens/mc"] == 0 and "value/mc_unparsed" not in first  # no MC rollouts to parse or save
    assert first["value/states"] == 4 and first["value/steps_per_response"] == 1.0
    assert 0.0 <= first["value/equal_reward_groups"] <= 1.0
    assert first["value/mc_mean"] == pytest.approx(first["train/reward"])  # equal group sizes
    # The same initial model and the same first batch of samples; only the credit differs.
    assert group[0]["eval/accuracy"] == vine[0]["eval/accuracy"]
    for key in ("train/reward", "tokens/policy", "train/truncated", "train/unparsed"):
        assert first[key] == vine[1][key], key
    assert set(vine[1]) - set(first) == {
        "value/mc_unparsed", "value/mc_saved", "value/rollouts_trained", "value/skipped", "value/steps_merged"
    }
    assert set(first) - set(vine[1]) == {"value/equal_reward_groups"}
