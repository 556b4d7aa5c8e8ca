"""VinePPO credit: hand-computed advantages, prefix deduplication, and an MC toy whose true values are known."""

import itertools
import math

import pytest
import torch

from vineppo.config import AlgoConfig, Config, VinePPOOptions
from vineppo.context import Context
from vineppo.credit.vine import spread_over_tokens, step_advantages, vine_credit
from vineppo.engine.base import Completion, SamplingParams, sample_counts
from vineppo.episodes import Episode
from vineppo.steps import merge_unsurprising_steps
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


def vine(episodes, engine, task, decode, k, params=SamplingParams(), generator=None, **options):
    """`vine_credit` with `algo.vineppo` = (k, **options) and the rest of a context that it does not read."""
    cfg = Config(algo=AlgoConfig(vineppo=VinePPOOptions(k=k, **options)))
    return vine_credit(episodes, Context(cfg, engine, task, decode, params, torch.device("cpu"), generator))


class CoinTask(FakeTaskBase):
    name = "coin"

    def grade(self, problem, response):
        return Grade(float(response.count("H") >= 2), parsed=True)


class CoinEngine:
    """Continues a prefix of the toy process; the prompt is a single token ([2]; [3] for a second prompt)."""

    def __init__(self):
        self.calls = []
        self.counts = []  # per call, the samples asked of each prefix

    def generate(self, prefixes, n, params, generator=None, on_progress=None, budgets=None):
        self.calls.append([list(p) for p in prefixes])
        self.counts.append(sample_counts(prefixes, n))
        self.budgets = budgets
        out = []
        for prefix, count in zip(prefixes, self.counts[-1]):
            done_lines = decode(prefix[1:]).count("\n")
            rows = []
            for _ in range(count):
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
    metrics = vine(episodes, engine, CoinTask(), decode, k=4, params=SamplingParams(), max_value_steps=None,
                        generator=torch.Generator().manual_seed(0))
    (prefixes,) = engine.calls
    assert engine.budgets == [64 - (len(p) - 1) for p in prefixes]  # max_new_tokens minus the response so far
    # states: the prompt (shared by all 3), "H\n" (shared by the first two), "H\nT\n", "H\nH\n", "T\n", "T\nT\n"
    assert len(prefixes) == metrics["value/states"] == 6
    assert len(set(map(tuple, prefixes))) == 6
    for episode in episodes:
        assert episode.step_starts == [0, 2, 4]
        assert len(episode.step_values) == 3
        assert len(episode.advantages) == len(episode.response_ids)
        # a state with 2 heads already is worth exactly 1 whatever the rollouts do
    assert episodes[1].step_values[2] == 1.0
    assert episodes[1].advantages[-1] == 0.0  # R - V = 1 - 1 on the last step
    assert metrics["tokens/mc"] == sum(4 * (LINES - i) * 2 + 4 for i in (0, 1, 2, 2, 1, 2))


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
        vine([episode], CoinEngine(), CoinTask(), decode, k=k, params=SamplingParams(),
                    max_value_steps=None, generator=generator)
        for i in range(3):
            value_sums[i] += episode.step_values[i]
            adv_sums[i] += episode.advantages[episode.step_starts[i]]
    for i in range(3):
        stderr = math.sqrt(truth[i] * (1 - truth[i]) / (k * repeats))
        assert abs(value_sums[i] / repeats - truth[i]) < 4 * stderr + 1e-9
        assert abs(adv_sums[i] / repeats - exact_adv[i]) < 8 * stderr + 1e-9


def test_cap_on_value_steps_merges_the_tail():
    """max_value_steps = 1 estimates s_0 and s_1; under "merge" the third line joins the second step."""
    engine = CoinEngine()
    episode = make_episode([True, True, False])
    vine([episode], engine, CoinTask(), decode, k=2, params=SamplingParams(), max_value_steps=1)
    assert episode.step_starts == [0, 2]
    assert len(engine.calls[0]) == 2
    tail = episode.advantages[2:]
    assert tail == [1.0 - episode.step_values[1]] * len(tail)


LINE_VOCAB = {0: "x", 1: "\n", 2: ""}  # a line is "x\n"; 2 is eos


class LinesTask(FakeTaskBase):
    name = "lines"

    def grade(self, problem, response):
        return Grade(response.count("\n") / 30, parsed=True)


class EosEngine:
    """Ends every continuation at once: the MC value of a state is the grade of its prefix, exactly."""

    def __init__(self):
        self.calls = []

    def generate(self, prefixes, n, params, generator=None, on_progress=None, budgets=None):
        self.calls.append(prefixes)
        return [[Completion([2], [0.0], "stop") for _ in range(count)] for count in sample_counts(prefixes, n)]


@pytest.mark.parametrize("after_value_cap", ["zero", "merge"])
def test_a_cap_of_25_estimates_26_boundaries_as_the_official_code(after_value_cap):
    """A 30-line response, max_value_steps 25: V(s_0) .. V(s_25) are estimated (the official
    max_step_for_value_estimation = 25 gives 26 values), V(s_i) = i / 30 here. "zero" (official): the step at
    the cap gets R - V(s_25) and the four after it 0; "merge": those four lines share R - V(s_25)."""
    ids = [0, 1] * 30 + [2]
    episode = Episode(0, PROBLEM, [1], ids, [0.0] * len(ids), "stop", reward=1.0, parsed=True)
    engine = EosEngine()
    vine([episode], engine, LinesTask(), lambda t: "".join(LINE_VOCAB[i] for i in t), k=2,
                params=SamplingParams(), max_value_steps=25, after_value_cap=after_value_cap)
    assert len(engine.calls[0]) == 26
    assert episode.step_values[:26] == pytest.approx([i / 30 for i in range(26)])
    if after_value_cap == "zero":
        assert episode.step_starts == [2 * i for i in range(30)]
        assert episode.step_values[26:] == [1.0] * 4
        assert episode.advantages[50:52] == pytest.approx([5 / 30] * 2)  # step 25 (tokens 50, 51)
        assert episode.advantages[52:] == [0.0] * 9  # steps 26-29 and eos
    else:
        assert episode.step_starts == [2 * i for i in range(26)]
        assert episode.advantages[50:] == pytest.approx([5 / 30] * 11)
    assert episode.advantages[:50] == pytest.approx([1 / 30] * 50)


def test_a_response_cut_off_at_the_length_limit_earns_nothing():
    from vineppo.episodes import grade_responses

    full = "H\nH\nT\n"
    stopped, cut_off = grade_responses(CoinTask(), [PROBLEM, PROBLEM], [full, full], ["stop", "length"])
    assert stopped.reward == 1.0
    assert cut_off.reward == 0.0


SCRIPT = "x=2\n#### 5\n\n\nProblem: y=3\n#### 7\n\n\nProblem: z=1\n#### 8\n"
STOP = "\n\n\nProblem:"
CHARS = sorted(set(SCRIPT))
SCRIPT_EOS = len(CHARS)


def script_texts(ids):
    return [CHARS[i] if i < len(CHARS) else "" for i in ids]


class ScriptEngine:
    """Continues any prefix along SCRIPT, one character per token, and keeps going (into a new problem) unless
    its generated text holds a stop string, like the real engines, whose stop handling it shares."""

    def generate(self, prefixes, n, params, generator=None, on_progress=None, budgets=None):
        from vineppo.engine.base import end_at_stop_string

        out = []
        counts, budgets = sample_counts(prefixes, n), budgets or [params.max_new_tokens] * len(prefixes)
        for prefix, budget, count in zip(prefixes, budgets, counts):
            start = len("".join(script_texts(prefix[1:])))  # prefix[0] is the prompt
            ids, reason = [], "length"
            for char in SCRIPT[start : start + budget]:
                ids.append(CHARS.index(char))
                if any(stop in "".join(script_texts(ids)) for stop in params.stop):
                    reason = "stop"
                    break
            completion = Completion(ids, [0.0] * len(ids), reason)
            out.append([end_at_stop_string(completion, params.stop, script_texts, SCRIPT_EOS)] * count)
        return out


class LastAnswerTask(FakeTaskBase):
    """Grades the last "#### N" of the text, as a response that ran on into a new problem is graded."""

    name = "last_answer"

    def grade(self, problem, response):
        answers = [line[5:] for line in response.split("\n") if line.startswith("#### ")]
        return Grade(float(bool(answers) and answers[-1] == "5"), parsed=bool(answers))


def test_a_response_ending_on_a_stop_string_gets_the_value_of_its_last_state_right():
    """The plain prompt format stops at "\n\n\nProblem:". The response is recorded without it and with eos, so
    the answer line is the last step and the MC value of the state before it is R for this deterministic
    policy: kept, the stop string would be a step of its own, whose rollouts cannot stop and run on into a new
    problem graded 0, giving the correct answer line a negative advantage."""
    engine = ScriptEngine()
    params = SamplingParams(temperature=0.6, max_new_tokens=40, stop=(STOP,))
    (response,) = engine.generate([[SCRIPT_EOS]], 1, params)[0]
    assert "".join(script_texts(response.token_ids)) == "x=2\n#### 5" and response.token_ids[-1] == SCRIPT_EOS
    episode = Episode(0, PROBLEM, [SCRIPT_EOS], response.token_ids, response.logprobs, "stop", reward=1.0,
                      parsed=True)
    vine([episode], engine, LastAnswerTask(), lambda ids: "".join(script_texts(ids)), k=3, params=params,
                max_value_steps=None)
    assert episode.step_starts == [0, 4]  # "x=2\n", "#### 5" + eos
    assert episode.step_values == [1.0, 1.0]
    assert episode.advantages == [0.0] * len(response.token_ids)


def test_end_at_stop_string_keeps_a_token_holding_text_before_the_stop_string():
    from vineppo.engine.base import end_at_stop_string

    texts = {0: "#### 5\n", 1: "\n\nProb", 2: "lem:", 3: ""}
    completion = Completion([0, 1, 2], [-0.1, -0.2, -0.3], "stop")
    ended = end_at_stop_string(completion, (STOP,), lambda ids: [texts[i] for i in ids], eos_token_id=3)
    assert ended.token_ids == [0, 3] and ended.logprobs == [-0.1, 0.0] and ended.finish_reason == "stop"
    at_eos = Completion([0, 3], [-0.1, -0.4], "stop")
    assert end_at_stop_string(at_eos, (STOP,), lambda ids: [texts[i] for i in ids], 3) == at_eos


def test_the_group_root_is_the_mean_reward_of_the_other_samples_and_saves_the_prompt_rollouts():
    """root_value "group": V(s_0) of sample i is the mean reward of its prompt's other samples, by hand; the bare
    prompt is not rolled out; a prompt with one sample falls back to MC."""
    engine = CoinEngine()
    flips = [[True, True, False], [False, False, False], [True, False, False], [True, False, True]]  # 1, 0, 0, 1
    group = [make_episode(f) for f in flips]
    lone = make_episode([True, True, True], prompt_index=1)
    metrics = vine([*group, lone], engine, CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, root_value="group")
    assert [e.step_values[0] for e in group] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3])
    for episode in group:
        assert episode.advantages[0] == pytest.approx(episode.step_values[1] - episode.step_values[0])
    (prefixes,) = engine.calls
    assert prefixes.count([2]) == 1  # the bare prompt: only for the lone sample, whose root is MC
    assert lone.step_values[0] in (0.0, 0.5, 1.0)
    # MC states: the lone root, "H\n", "H\nH\n", "T\n", "T\nT\n", "H\nT\n" (the lone sample's "H\n", "H\nH\n" shared)
    assert metrics["value/states"] == len(prefixes) == 6


def coin_groups(generator, groups, size=4):
    """`groups` groups of `size` samples of the coin process, as episodes (group g has prompt_index g)."""
    engine = CoinEngine()
    episodes = []
    for g in range(groups):
        for row in engine.generate([[2]], size, SamplingParams(), generator)[0]:
            reward = float(decode(row.token_ids).count("H") >= 2)
            episodes.append(Episode(g, PROBLEM, [2], row.token_ids, row.logprobs, "stop", reward=reward, parsed=True))
    return episodes


def heads_before(episode, step):
    return decode(episode.response_ids[: 2 * step]).count("H")


@pytest.mark.parametrize("options, fewest", [
    ({"root_value": "group"}, 2), ({"reuse_samples": True}, 2), ({"k_allocation": "group_spread"}, 1),
    ({"k_allocation": "group_spread", "reuse_samples": True}, 1),
])
def test_values_are_unbiased_and_independent_of_the_sample_own_reward(options, fewest):
    """Over 600 groups of 4 from the coin process, the value of every state (step, heads so far) averages its true
    value, and as much after samples that scored 1 as after samples that scored 0: siblings' rewards stand in for
    rollouts without seeing the sample's own (a mean that included it fails this by 0.1 or more), and rollouts
    shared out by the group's rewards stay fresh draws. `fewest`: the fewest rollouts a value averages."""
    episodes = coin_groups(torch.Generator().manual_seed(2), 600)
    generator = torch.Generator().manual_seed(3)
    for g in range(600):  # one group at a time: the groups share the prompt, so together they would share states
        vine(episodes[4 * g : 4 * g + 4], CoinEngine(), CoinTask(), decode, k=2, generator=generator,
             max_value_steps=None, **options)
    buckets = {}
    for episode in episodes:
        for step, value in enumerate(episode.step_values):
            buckets.setdefault((step, heads_before(episode, step), episode.reward), []).append(value)
    checked = 0
    for (step, heads, reward), values in buckets.items():
        truth = true_value(heads, LINES - step)
        if len(values) < 100 or truth in (0.0, 1.0):
            continue
        stderr = math.sqrt(truth * (1 - truth) / fewest / len(values))
        assert abs(sum(values) / len(values) - truth) < 4.5 * stderr, (step, heads, reward)
        checked += 1
    assert checked >= 6  # s_0, "H", "T" and "HT" after either reward


def test_reused_siblings_replace_rollouts_by_hand():
    """reuse_samples with K = 2 on a group of 4: a state with 2 or more siblings through it is not rolled out, one
    with a single sibling gets 1 rollout, a lone one 2; values by hand."""
    engine = CoinEngine()
    flips = [[True, True, False], [False, False, False], [True, False, False], [True, False, True]]  # 1, 0, 0, 1
    group = [make_episode(f) for f in flips]
    metrics = vine(group, engine, CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, reuse_samples=True)
    assert [e.step_values[0] for e in group] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3])  # 3 siblings each
    # "H\n": samples 0, 2, 3 pass; each has the other two's rewards
    assert [group[i].step_values[1] for i in (0, 2, 3)] == pytest.approx([1 / 2, 1, 1 / 2])
    # "H\nT\n": samples 2 and 3, one sibling each and the same single rollout x: (1 + x) / 2 and (0 + x) / 2
    assert group[2].step_values[2] - group[3].step_values[2] == pytest.approx(0.5)
    assert group[3].step_values[2] in (0.0, 0.5)
    assert group[0].step_values[2] == 1.0  # "H\nH\n": 2 heads already, 2 rollouts of its own
    assert group[1].step_values[1] in (0.0, 0.5, 1.0)  # "T\n", alone: the mean of 2 rollouts
    assert group[1].step_values[2] == 0.0  # "T\nT\n": 2 heads out of reach
    # one call: 2 rollouts of "T\n", "H\nH\n", "T\nT\n"; 1 of "H\nT\n"
    (call,), (counts,) = engine.calls, engine.counts
    assert sorted(counts) == [1, 2, 2, 2] and len(call) == 4
    assert metrics["value/states"] == 4
    assert metrics["value/mc_saved"] == pytest.approx(1 - 7 / 12)  # 6 unique states x K = 12 without reuse
    for episode in group:
        assert episode.advantages[0] == pytest.approx(episode.step_values[1] - episode.step_values[0])


def test_group_spread_shares_the_rollouts_by_the_groups_reward_spread_by_hand():
    """K = 3 over two prompts: one whose samples disagree (rewards 1, 0, 0, 1: spread 0.5; 6 states) and one whose
    samples both failed (spread 0; 3 states). The 3 x 9 = 27 rollouts of uniform K: 1 for each state of the
    failed prompt, the other 24 shared by the 6 states of the first, 4 each."""
    engine = CoinEngine()
    flips = [[True, True, False], [False, False, False], [True, False, False], [True, False, True]]  # 1, 0, 0, 1
    mixed = [make_episode(f) for f in flips]  # states: the prompt, "H", "T", "HH", "TT", "HT"
    failed = [make_episode(f, prompt_index=1) for f in ([False, False, False], [False, False, True])]
    for episode in failed:
        episode.prompt_ids = [3]  # another prompt, so its states ("", "T", "TT") are its own
    metrics = vine([*mixed, *failed], engine, CoinTask(), decode, k=3, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, k_allocation="group_spread")
    (call,), (counts,) = engine.calls, engine.counts  # one engine call, uneven counts
    rolled = {n: sorted(tuple(p) for p, c in zip(call, counts) if c == n) for n in set(counts)}
    assert set(rolled) == {1, 4} and rolled[1] == [(3,), (3, 1, 2), (3, 1, 2, 1, 2)]
    assert len(rolled[4]) == 6 and all(p[0] == 2 for p in rolled[4])
    assert metrics["value/states"] == 9
    assert metrics["value/mc_saved"] == pytest.approx(0.0)  # the same 27 rollouts, shared differently
    assert failed[0].step_values[2] == 0.0  # "T\nT\n": out of reach with any number of rollouts


def test_trained_rollouts_are_episodes_of_their_states_with_leave_one_out_advantages_by_hand():
    """train_rollouts = 1 with K = 2 on a group of 4: every rollout becomes an episode whose prompt is the state and
    whose every token gets R_j minus the mean reward of the state's other children (its other rollout and the
    samples through it); the samples keep their own credit, and share 0.5 trains half of the rollouts."""
    flips = [[True, True, False], [False, False, False], [True, False, False], [True, False, True]]  # 1, 0, 0, 1
    group = [make_episode(f) for f in flips]
    episodes = list(group)
    metrics = vine(episodes, CoinEngine(), CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, train_rollouts=1.0)
    trained = episodes[len(group):]
    assert episodes[: len(group)] == group and not any(e.rollout for e in group)
    # 6 unique states ("", "H", "T", "HH", "HT", "TT") x 2 rollouts
    assert len(trained) == metrics["value/rollouts_trained"] == 12 and all(e.rollout for e in trained)
    by_state = {}
    for episode in trained:
        by_state.setdefault(decode(episode.prompt_ids[1:]), []).append(episode)
    assert sorted(by_state) == ["", "H\n", "H\nH\n", "H\nT\n", "T\n", "T\nT\n"]
    for state, pair in by_state.items():
        assert len(pair) == 2
        through = [e.reward for e in group if decode(e.response_ids).startswith(state)]
        for own, other in (pair, pair[::-1]):
            baseline = (other.reward + sum(through)) / (1 + len(through))
            assert own.advantages == pytest.approx([own.reward - baseline] * len(own.response_ids))
            assert own.step_values == pytest.approx([baseline])
            assert decode(own.response_ids).count("\n") == LINES - state.count("\n")
    assert {a for e in by_state["H\nH\n"] for a in e.advantages} == {0.0}  # children agree: no std scaling
    assert by_state[""][0].advantages[0] == pytest.approx(by_state[""][0].reward - (by_state[""][1].reward + 2) / 5)

    half = [make_episode(f) for f in flips]
    metrics = vine(half, CoinEngine(), CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, train_rollouts=0.5)
    assert len(half) == 4 + 6 == 4 + metrics["value/rollouts_trained"]


def line_scores(episode):
    """Per line of the coin toy, the score d log pi / d theta_line of the episode's flip there (a policy with one
    logit per line, P(heads) = P_HEADS): 1 - p for heads, -p for tails, times the token's advantage."""
    first = (len(episode.prompt_ids) - 1) // 2  # the line the episode's response starts at
    out = [0.0] * LINES
    for line in range(first, LINES):
        token = episode.response_ids[2 * (line - first)]
        out[line] = ((1 - P_HEADS) if token == 0 else -P_HEADS) * episode.advantages[2 * (line - first)]
    return out


def value_gradient(heads, lines_done, line):
    """d V(state) / d theta_line, exactly, for a state after `lines_done` lines with `heads` heads."""
    total = 0.0
    for rest in range(2 ** (LINES - lines_done)):
        flips = [(rest >> b) & 1 == 1 for b in range(LINES - lines_done)]
        chance = math.prod(P_HEADS if f else 1 - P_HEADS for f in flips)
        score = (1 - P_HEADS) if flips[line - lines_done] else -P_HEADS
        total += chance * score * float(heads + sum(flips) >= 2)
    return total


def test_training_on_rollouts_weights_each_state_by_its_rollouts_and_the_chance_a_sample_reaches_it():
    """The exact expected update of VinePPO with every rollout trained (K = 2, groups of n = 4, summed over the
    tokens), per line l of the coin toy: n dJ/dtheta_l from the samples, plus for every state s at or above line
    l, K (1 - (1 - P(s))^n) dV(s)/dtheta_l from its rollouts (a state is rolled out once, if any sample reaches
    it). Checked against the mean over 1,500 groups; the naive weighting n (1 + K (l + 1)) dJ/dtheta_l (K rollouts
    per sample and boundary, no sharing) is far outside the same interval."""
    n, k, groups = 4, 2, 1500
    episodes = coin_groups(torch.Generator().manual_seed(4), groups, size=n)
    generator = torch.Generator().manual_seed(5)
    per_group = []
    for g in range(groups):
        trained = episodes[n * g : n * g + n]
        vine(trained, CoinEngine(), CoinTask(), decode, k=k, generator=generator, max_value_steps=None,
             train_rollouts=1.0)
        per_group.append(torch.tensor([line_scores(e) for e in trained]).sum(0))
    updates = torch.stack(per_group).double()
    mean, stderr = updates.mean(0), updates.std(0) / math.sqrt(groups)
    for line in range(LINES):
        exact = n * value_gradient(0, 0, line)
        naive = n * (1 + k * (line + 1)) * value_gradient(0, 0, line)
        for depth in range(line + 1):
            for prefix in range(2**depth):
                flips = [(prefix >> b) & 1 == 1 for b in range(depth)]
                reached = math.prod(P_HEADS if f else 1 - P_HEADS for f in flips)
                exact += k * (1 - (1 - reached) ** n) * value_gradient(sum(flips), depth, line)
        assert abs(mean[line].item() - exact) < 4.5 * stderr[line].item(), (line, mean[line].item(), exact)
        assert abs(naive - exact) > 8 * stderr[line].item(), (line, naive, exact)


def test_skipping_agreeing_groups_values_and_trains_only_the_prompts_whose_samples_disagree():
    """skip_agreeing_groups: a prompt whose 2 samples both failed is neither rolled out nor trained on (advantage 0
    on every token, removed from the list to train on); the mixed prompt is valued as without the option; a lone
    sample is not a group that agrees."""
    engine = CoinEngine()
    mixed = [make_episode(f) for f in ([True, True, False], [False, False, False])]  # 1, 0
    failed = [make_episode(f, prompt_index=1) for f in ([False, False, False], [False, True, False])]
    lone = make_episode([False, False, False], prompt_index=2)
    for episode in failed:
        episode.prompt_ids = [3]
    lone.prompt_ids = [1]
    samples = [*mixed, *failed, lone]
    episodes = list(samples)
    metrics = vine(episodes, engine, CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, skip_agreeing_groups=True)
    assert episodes == [*mixed, lone]
    assert metrics["value/skipped"] == pytest.approx(2 / 5)
    (prefixes,) = engine.calls
    assert all(p[0] in (1, 2) for p in prefixes)  # nothing of the failed prompt is rolled out
    for episode in failed:
        assert episode.advantages == [0.0] * len(episode.response_ids)
    assert len(mixed[0].step_values) == len(lone.step_values) == 3


def coin_logprobs(token_ids):
    """The coin policy's log-probs of a response's tokens: log p for heads, log(1 - p) for tails, 0 for the rest."""
    return [{0: math.log(P_HEADS), 1: math.log(1 - P_HEADS)}.get(t, 0.0) for t in token_ids]


def expected_update(valued_starts):
    """The exact expected update per line of the coin toy (one logit per line) when the boundaries
    `valued_starts(flips, logprobs)` are valued with their true values and every token of a merged step gets its
    advantage: sum over the 8 responses of chance x score x advantage, through the credit's own functions."""
    out = [0.0] * LINES
    for flips in itertools.product([True, False], repeat=LINES):
        episode = make_episode(list(flips))
        starts = valued_starts(flips, coin_logprobs(episode.response_ids))
        values = [true_value(sum(flips[: s // 2]), LINES - s // 2) for s in starts]
        episode.advantages = spread_over_tokens(step_advantages(values, episode.reward), starts,
                                                len(episode.response_ids))
        chance = math.prod(P_HEADS if f else 1 - P_HEADS for f in flips)
        out = [total + chance * score for total, score in zip(out, line_scores(episode))]
    return out


@pytest.mark.parametrize("min_surprisal", [0.0, 0.3, 0.5, 1.0, 1.3, 100.0])
def test_merging_steps_by_the_surprisal_before_a_boundary_keeps_the_update_unbiased(min_surprisal):
    """Heads carry -log 0.3 = 1.20 nats, tails -log 0.7 = 0.36: each threshold merges different lines on different
    responses (100: every line, the outcome-level R - V(s_0)), and the expected update is the policy gradient
    dJ/dtheta_l at every line, exactly. A rule that decides the boundary before a line by that line's own flip
    (valued iff it comes out heads) reads past the boundary, and its expected update misses the gradient."""
    lines = [0, 2, 4]
    exact = [value_gradient(0, 0, line) for line in range(LINES)]
    merged = expected_update(lambda flips, logprobs: merge_unsurprising_steps(lines, logprobs, min_surprisal))
    assert merged == pytest.approx(exact, abs=1e-12)
    peeking = expected_update(lambda flips, logprobs: [0] + [s for s in lines[1:] if flips[s // 2]])
    assert abs(peeking[0] - exact[0]) > 0.04  # 0.0397 against 0.0882


def test_merged_steps_are_rolled_out_only_at_the_boundaries_kept():
    """min_step_surprisal 1.0 on "H T T" (1.20, 0.36, 0.36 nats) and "T T H" (0.36, 0.71 after two lines): the first
    keeps s_1 ("H") and merges its last two lines; the second merges all three (the last line's heads comes after
    the last boundary). States rolled out: the shared root and "H" only."""
    engine = CoinEngine()
    episodes = [make_episode([True, False, False]), make_episode([False, False, True])]
    for episode in episodes:
        episode.sample_logprobs = coin_logprobs(episode.response_ids)
    metrics = vine(episodes, engine, CoinTask(), decode, k=2, generator=torch.Generator().manual_seed(0),
                   max_value_steps=None, min_step_surprisal=1.0)
    (prefixes,) = engine.calls
    assert sorted(prefixes) == [[2], [2, 0, 2]]
    assert [e.step_starts for e in episodes] == [[0, 2], [0]]
    assert metrics["value/steps_merged"] == pytest.approx(3 / 4)  # 4 line boundaries after s_0, 1 kept
    first, second = episodes
    assert first.advantages[2:] == [first.reward - first.step_values[1]] * 5  # lines 2-3 and eos: R - V("H")
    assert second.advantages == [second.reward - second.step_values[0]] * 7
