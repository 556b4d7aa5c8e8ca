"""`vineppo analyze values`: its figures on hand-computed cases, its estimators on toys whose values are known,
and one end-to-end run on a tiny PPO run."""

import itertools
import json
import shutil

import pytest
import torch
from tiny import TINY
from transformers import LlamaConfig, LlamaForTokenClassification

from vineppo.analysis.states import alternative_next_states, value_network_values
from vineppo.analysis.stats import (
    mc_sampling_error,
    mean_absolute_error,
    ranking_accuracy,
    ranking_scores,
)
from vineppo.cli import main
from vineppo.config import PPOOptions, TrainConfig
from vineppo.credit.critic import Critic
from vineppo.credit.vine import mc_values
from vineppo.engine.base import Completion, SamplingParams
from vineppo.episodes import Episode
from vineppo.models import build_char_tokenizer
from vineppo.parallel.backend import Trained
from vineppo.rollout import Rollout, State
from vineppo.steps import TokenTexts
from vineppo.tasks.base import Grade, Problem
from fakes import FakeTaskBase

PROBLEM = Problem("p0", "3+4*2\n", "3+4=7\n7*2=4\n#4", "4")


# -- the figures --------------------------------------------------------------------------------------------------
def test_mean_absolute_error_with_its_standard_error():
    mae = mean_absolute_error([0.5, 0.0], [0.25, 0.5])  # errors 0.25 and 0.5
    assert mae.mean == pytest.approx(0.375)
    assert mae.stderr == pytest.approx(0.125)  # sample std 0.25 / sqrt(2), over sqrt(2)
    assert mae.count == 2
    single = mean_absolute_error([1.0], [0.75])
    assert (single.mean, single.stderr) == (0.25, None)
    assert mean_absolute_error([], []).mean is None


def test_ranking_scores_ties_count_half_and_equal_ground_truth_is_dropped():
    truth = [(0.5, 0.2), (0.5, 0.2), (0.2, 0.5), (0.3, 0.3), (0.9, 0.1), (0.0, 1.0)]
    predicted = [(0.6, 0.1), (0.1, 0.6), (0.4, 0.4), (0.0, 1.0), (0.2, 0.3), (0.1, 0.8)]
    assert ranking_scores(truth, predicted) == [1.0, 0.0, 0.5, 0.0, 1.0]
    accuracy = ranking_accuracy(truth, predicted)
    assert (accuracy.mean, accuracy.count) == (pytest.approx(2.5 / 5), 5)
    assert ranking_accuracy([(0.4, 0.4)], [(0.1, 0.9)]).count == 0


@pytest.mark.parametrize("value, k", [(0.3, 3), (0.5, 2), (0.8, 5), (0.0, 9), (1.0, 9)])
def test_mc_sampling_error_matches_enumerating_every_outcome(value, k):
    expected = 0.0
    for draws in itertools.product([0, 1], repeat=k):
        probability = 1.0
        for d in draws:
            probability *= value if d else 1 - value
        expected += probability * abs(sum(draws) / k - value)
    assert mc_sampling_error(value, k) == pytest.approx(expected)


# -- the estimators on toys ---------------------------------------------------------------------------------------
ONE, ZERO, EOS, X = 1, 2, 3, 4
TEXT = {ONE: "1", ZERO: "0", EOS: "", X: "x"}


def decode(ids):
    return "".join(TEXT[i] for i in ids)


class CoinTask(FakeTaskBase):
    """Reward 1 if the response holds a "1" anywhere."""

    def grade(self, problem, response):
        return Grade(float("1" in response), True)


class CoinEngine:
    """Continues a prefix with "1" (probability `heads`) or "0", then eos; cut off ("length") when its budget is
    under those 2 tokens. The value of a state is thus known exactly."""

    def __init__(self, heads):
        self.heads = heads
        self.budgets = None

    def generate(self, prefixes, n, params, generator=None, on_progress=None, budgets=None):
        self.budgets = budgets
        out = []
        for prefix, budget in zip(prefixes, budgets):
            draws = (torch.rand(n, generator=generator) < self.heads).tolist()
            out.append([
                Completion([ONE if d else ZERO, EOS], [0.0, 0.0], "stop") if budget >= 2
                else Completion([ONE if d else ZERO], [0.0], "length")
                for d in draws
            ])
        return out


def test_ground_truth_is_the_exact_value_on_a_toy():
    params = SamplingParams(1.0, 1.0, max_new_tokens=6)
    states = [
        State(PROBLEM, [X], [], 0),  # value = heads
        State(PROBLEM, [X], [X, X], 1),  # value = heads
        State(PROBLEM, [X], [ONE], 1),  # the response already holds a "1": value 1
        State(PROBLEM, [X], [X] * 5, 1),  # budget 1: every rollout is cut off, value 0
    ]
    engine = CoinEngine(heads=0.3)
    mc = mc_values(engine, CoinTask(), decode, states, 20_000, params, torch.Generator().manual_seed(0))
    values, rollouts = mc.values, mc.rollouts
    assert engine.budgets == [6, 4, 5, 1]  # max_new_tokens minus the state's response tokens, as vine_credit
    assert values[0] == pytest.approx(0.3, abs=0.013) and values[1] == pytest.approx(0.3, abs=0.013)  # 4 std
    assert values[2:] == [1.0, 0.0]
    assert [len(r) for r in rollouts] == [20_000] * 4


def test_alternative_next_states_take_the_first_two_different_non_final_steps():
    tokenizer = build_char_tokenizer("0123456789+-*=#\n")
    texts = TokenTexts(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    state = State(PROBLEM, ids("3+4*2\n"), ids("3+4=7\n"), 1)
    rollout = lambda text: Rollout(Completion(ids(text) + [tokenizer.eos_token_id], [], "stop"), Grade(0.0, True))  # noqa: E731
    rollouts = [rollout("#4"), rollout("7*2=4\n#4"), rollout("7*2=4\n#3"), rollout("7*2=6\n#6"), rollout("7*2=1\n#1")]
    first, second = alternative_next_states(state, rollouts, texts)
    assert first.response_ids == ids("3+4=7\n7*2=4\n") and second.response_ids == ids("3+4=7\n7*2=6\n")
    assert first.step == second.step == 2 and first.prompt_ids == state.prompt_ids
    assert alternative_next_states(state, rollouts[:3], texts) is None


def test_value_network_is_read_where_the_critic_reads_step_boundaries():
    tokenizer = build_char_tokenizer("0123456789+-*=#\n")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForTokenClassification(config)
    decode_ids = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    prompts = [tokenizer("3+4*2\n").input_ids, tokenizer("5-1\n").input_ids]
    responses = [tokenizer("3+4=7\n7*2=4\n#4", add_special_tokens=False).input_ids, tokenizer("5-1=4\n#4").input_ids]
    episodes = [Episode(0, PROBLEM, p, r, [0.0] * len(r), "stop") for p, r in zip(prompts, responses)]
    Critic(Trained(model, None, None), PPOOptions(), TrainConfig()).assign_credit(
        episodes, tokenizer.pad_token_id, decode_ids, torch.device("cpu")
    )
    states = [State(PROBLEM, e.prompt_ids, e.response_ids[:start], i)
              for e in episodes for i, start in enumerate(e.step_starts)]
    assert len(states) == 5
    predicted = value_network_values(model, states, tokenizer.pad_token_id, torch.device("cpu"), batch_size=3)
    assert predicted == pytest.approx([v for e in episodes for v in e.step_values], abs=1e-6)


# -- end to end ---------------------------------------------------------------------------------------------------
ANALYSIS = ["--states", "4", "--ground-truth-rollouts", "16", "--k", "2"]


@pytest.mark.slow
@pytest.mark.usefixtures("sft_cache")
def test_analyze_values_of_a_tiny_ppo_run(tmp_path, capsys):
    run = tmp_path / "ppo"
    assert main(["train", "--run-dir", str(run), *TINY, "algo.name=ppo", "train.iterations=1"]) == 0
    capsys.readouterr()

    assert main(["analyze", "values", "--run", str(run), *ANALYSIS]) == 0
    out = run / "analysis"
    result = json.loads((out / "values.json").read_text())
    assert (out / "values_scatter.png").stat().st_size > 0 and (out / "values_errors.png").stat().st_size > 0
    assert result["value_network"] == "present" and result["checkpoint_iteration"] == 1
    settings = {"states": 4, "ground_truth_rollouts": 16, "k": 2, "seed": 0}
    assert {key: result["settings"][key] for key in settings} == settings
    counts = result["counts"]
    assert counts["states"] == 4 == len(result["states"]) and counts["test_responses"] == 8
    assert counts["ranked_pairs"] + counts["pairs_with_equal_ground_truth"] == counts["states_with_two_next_steps"]
    for name in ("mc", "value_network", "value_network_minus_mc"):
        assert result["mean_absolute_error"][name]["count"] == 4
    assert set(result["step_ranking_accuracy"]) == {"mc", "value_network"}
    for state in result["states"]:
        assert 0 <= state["ground_truth"] <= 1 and state["mc"] in (0.0, 0.5, 1.0)
    assert "mean absolute error: PPO value network" in capsys.readouterr().err

    # Seeded: a second analysis draws the same states and rollouts.
    again = tmp_path / "again.json"
    assert main(["analyze", "values", "--run", str(run), *ANALYSIS, "--output", str(again)]) == 0
    assert (tmp_path / "again_scatter.png").is_file()
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(json.loads(again.read_text())) == strip(result)

    # Without a value network: the MC estimate alone, unless --value-run lends one.
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "checkpoints" / "iter_000001" / "value")
    capsys.readouterr()
    assert main(["analyze", "values", "--run", str(bare), *ANALYSIS]) == 0
    assert "value network: absent" in capsys.readouterr().err
    alone = json.loads((bare / "analysis" / "values.json").read_text())
    assert alone["value_network"] == "absent" and set(alone["mean_absolute_error"]) == {"mc"}
    assert alone["mean_absolute_error"]["mc"] == result["mean_absolute_error"]["mc"]
    assert main(["analyze", "values", "--run", str(bare), *ANALYSIS, "--value-run", str(run)]) == 0
    lent = json.loads((bare / "analysis" / "values.json").read_text())
    assert lent["mean_absolute_error"]["value_network"] == result["mean_absolute_error"]["value_network"]

    # Bad input: one line, exit 2.
    capsys.readouterr()
    assert main(["analyze", "values", "--run", str(run), "--value-run", str(bare)]) == 2
    assert "has no value network" in capsys.readouterr().err
    assert main(["analyze", "values", "--run", str(run), "--states", "0"]) == 2
    assert "states must be >= 1" in capsys.readouterr().err
    assert main(["analyze", "values", "--run", str(tmp_path / "missing")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


@pytest.mark.slow
def test_the_analysis_samples_as_a_chat_format_gsm8k_run_does(tmp_path, capsys):
    """The analysis builds the task (prompt format, stop strings) and the engine as the run did (vineppo.setup):
    a chat-format GSM8K run is analysed, where building the task without the model's chat template failed."""
    import string
    from pathlib import Path

    from transformers import LlamaForCausalLM

    fixtures = Path(__file__).parent / "fixtures"
    tokenizer = build_char_tokenizer(string.printable + "\u2019")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=1024))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    run = tmp_path / "run"
    overrides = [
        f"model.path={tmp_path / 'model'}", "task.name=gsm8k", "task.gsm8k.prompt_format=chat",
        f"task.gsm8k.train_source={fixtures / 'gsm8k_train4.jsonl'}",
        f"task.gsm8k.test_source={fixtures / 'gsm8k_test2.jsonl'}", "engine.max_new_tokens=6", "algo.vineppo.k=2",
        "train.iterations=1", "train.prompts_per_iteration=2", "train.samples_per_prompt=2",
        "train.mini_batch_size=4", "train.micro_batch_size=2", "logging.progress=false",
    ]
    assert main(["train", "--run-dir", str(run), *overrides]) == 0
    capsys.readouterr()
    assert main(["analyze", "values", "--run", str(run), "--states", "2", "--ground-truth-rollouts", "2",
                 "--k", "2"]) == 0
    result = json.loads((run / "analysis" / "values.json").read_text())
    assert result["counts"]["states"] == 2 and result["counts"]["test_responses"] == 2
