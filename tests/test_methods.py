"""The method table (vineppo.algorithms.METHODS): a new estimator is one function plus one row, and the trainer
runs any row without knowing its name."""

from tiny import TINY

from vineppo.algorithms import METHODS, Method
from vineppo.cli import main
from vineppo.runlog import read_metrics
from vineppo.update import train_ppo


def sign_credit(episodes, ctx):
    """A toy estimator: +1 on every token of a correct response, -1 elsewhere; its own metric."""
    for episode in episodes:
        advantage = 1.0 if episode.reward == 1.0 else -1.0
        episode.advantages = [advantage] * len(episode.response_ids)
        episode.step_starts, episode.step_values = [0], [0.0]
    return {"toy/credited": len(episodes)}


def test_a_toy_estimator_is_one_function_and_one_row(tmp_path, sft_cache, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Method(credit=sign_credit, update=train_ppo))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=1", "algo.name=toy"]) == 0
    first = read_metrics(run)[1]
    assert first["toy/credited"] == 8  # 4 prompts x 2 samples: its own metric, logged as it returned it
    assert first["tokens/mc"] == 0  # no MC rollouts
    assert first["advantage/min"] in (-1.0, 1.0) and first["advantage/max"] in (-1.0, 1.0)  # not whitened
    assert "loss/policy" in first and first["loss/grad_norm"] > 0  # the PPO update ran on them


def test_a_name_outside_the_table_is_refused_naming_the_methods(capsys):
    assert main(["train", "algo.name=toy"]) == 2
    err = capsys.readouterr().err
    assert "algo.name: 'toy' is not a method; choose one of vineppo, ppo, grpo, rloo, restem, dpo_plus" in err


def zero_credit(episodes, ctx):
    """A toy estimator that finds no signal: advantage 0 on every token."""
    for episode in episodes:
        episode.advantages = [0.0] * len(episode.response_ids)
        episode.step_starts, episode.step_values = [0], [0.0]
    return {}


def test_an_iteration_left_with_nothing_to_train_on_takes_no_step(tmp_path, sft_cache, monkeypatch):
    """algo.drop_zero_advantage when every advantage is 0 (whitening on, which would have made them -mean/std = 0
    anyway): the update trains on nothing and the run goes on."""
    monkeypatch.setitem(METHODS, "zero", Method(credit=zero_credit, update=train_ppo))
    run = tmp_path / "run"
    overrides = ["train.iterations=2", "algo.name=zero", "algo.drop_zero_advantage=true", "algo.whiten_advantages=true"]
    assert main(["train", "--run-dir", str(run), *TINY, *overrides]) == 0
    for record in read_metrics(run)[1:]:
        assert record["update/dropped_episodes"] == 1.0 and record["update/dropped_tokens"] == 1.0
        assert record["tokens/update"] == 0 and "loss/grad_norm" not in record
