"""VinePPO credit: Monte Carlo values at every step boundary, one-step TD advantages per step.

For a response cut into steps y_0 .. y_{n-1}, state s_i = prompt + y_0 .. y_{i-1}. V(s_i) is the mean reward of
K continuations sampled by the current policy from s_i with the training sampling settings (an unbiased MC
estimate). The step reward is 0 except R (the outcome reward) on the last step, and V after the last step is 0,
so A_i = V(s_{i+1}) - V(s_i) for i < n-1 and A_{n-1} = R - V(s_{n-1}); every token of step i gets A_i.
This is the official code's `_compute_step_advantages` (PAPER-NOTES 3.3). The KL penalty is not in the return:
it is a loss term (vineppo.losses).

With a cap on estimated boundaries (`algo.vineppo.max_value_steps` = c), s_0 .. s_c are estimated (c + 1
values, as the official `max_step_for_value_estimation`). The steps after s_c, `after_value_cap`: "zero" fills
their values with R as the official code does (V_i = r_i + V_{i+1}), so the step at the cap gets R - V(s_c) and
every later step 0; "merge" (a departure) merges them into the step at the cap, so all their tokens share
R - V(s_c) instead of learning nothing.

Requests are deduplicated by exact token prefix, so V(s_0) (the bare prompt) is computed once for all samples of
a prompt, as in the official code. Two departures, off by default, take rollouts from the prompt's other samples
instead (`plan_values`): `root_value` "group" at s_0, `reuse_samples` at every state they pass through;
`k_allocation` "group_spread" shares the rollouts unevenly among the states (`rollout_shares`);
`train_rollouts` trains on a share of the rollouts as episodes of their own (`rollout_episodes`);
`min_step_surprisal` values a boundary only after enough surprisal since the last one, merging the lines between
(vineppo.steps.merge_unsurprising_steps); and `skip_agreeing_groups` (biased) drops the prompts whose samples all
agree.

Why merged steps keep the advantages unbiased: V(s_t) is a martingale along a response (the reward comes at the
end), and the next valued boundary b after a token t is a stopping time (whether a boundary is valued reads only
the tokens before it), so E[V(s_b) | s_{t+1}] = V(s_{t+1}) by optional stopping; the last valued boundary at or
before t, s_a, is a function of s_t. So a token a_t of a merged step has E[A_t | s_t, a_t] = Q(s_t, a_t) - V(s_a),
Q less a baseline: its policy gradient term keeps its expectation. A rule that read a step's own tokens to decide
the boundary at its start would not (tests/test_credit.py computes both on the coin toy).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from vineppo.engine.base import Engine, SamplingParams
from vineppo.episodes import Episode, group_by_prompt
from vineppo.rollout import Rollout, State, rollout
from vineppo.steps import TokenTexts, estimated_boundaries, merge_unsurprising_steps, split_steps, step_spans
from vineppo.tasks.base import Task

if TYPE_CHECKING:
    from vineppo.config import VinePPOOptions
    from vineppo.context import Context


def step_advantages(values: Sequence[float], reward: float) -> list[float]:
    """A_i = r_i + V(s_{i+1}) - V(s_i) with r = (0, .., 0, R) and V(s_n) = 0."""
    next_values = list(values[1:]) + [0.0]
    rewards = [0.0] * (len(values) - 1) + [reward]
    return [r + v_next - v for r, v_next, v in zip(rewards, next_values, values)]


def spread_over_tokens(step_values: Sequence[float], starts: Sequence[int], num_tokens: int) -> list[float]:
    """Give every token of a step that step's value."""
    out = [0.0] * num_tokens
    for value, (begin, end) in zip(step_values, step_spans(starts, num_tokens)):
        out[begin:end] = [value] * (end - begin)
    return out


@dataclass(frozen=True)
class Boundary:
    """How one estimated step boundary of one episode is valued: the mean reward of `siblings` (the rewards of
    the prompt's other samples whose responses pass through the state, reused as rollouts from it) and of the
    first `rollouts` MC rollouts of `ValuePlan.states[state]`."""

    state: int | None  # None: no MC rollouts
    rollouts: int
    siblings: tuple[float, ...] = ()

    def value(self, state_rewards: Sequence[Sequence[float]]) -> float:
        mc = state_rewards[self.state][: self.rollouts] if self.state is not None else []
        return (sum(self.siblings) + sum(mc)) / (len(self.siblings) + self.rollouts)


@dataclass
class ValuePlan:
    """The MC rollouts VinePPO's values need, decided before any is sampled: the unique states (by exact token
    prefix, so V(s_0) is rolled out once for all samples of a prompt, as in the official code) with the number
    of rollouts each and the prompt's samples whose responses pass through it, and every episode's boundaries.
    `plain_rollouts`: what K rollouts per unique state, the paper's estimator, would have taken."""

    states: list[State] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)
    through: list[list[Episode]] = field(default_factory=list)
    boundaries: list[list[Boundary]] = field(default_factory=list)
    plain_rollouts: int = 0


def plan_values(
    episodes: Sequence[Episode], estimated: Sequence[Sequence[int]], options: VinePPOOptions
) -> ValuePlan:
    """The rollouts for the boundaries `estimated[i]` (response token offsets) of each episode under `options`.

    A sibling of episode i (another sample of its prompt, `Episode.prompt_index`) whose response starts with the
    state's tokens continued it as the policy would: its reward is a rollout of the state, independent of
    episode i's own continuation, so it may stand in for one. `reuse_samples` takes every such sibling and rolls
    out only K minus their number; `root_value` "group" takes them at s_0 (all siblings) and rolls out none.
    How many rollouts a boundary gets depends on prefixes and the samples' rewards, never on a rollout's, which
    keeps the mean unbiased.
    """
    plan = ValuePlan()
    index: dict[tuple[int, ...], int | None] = {}  # unique prefix -> its state in `plan.states` (None: no rollouts)
    groups = {id(e): group for group in group_by_prompt(list(episodes)) for e in group}
    keys = [  # per episode, the token prefix of each estimated boundary
        [tuple(e.prompt_ids + e.response_ids[:start]) for start in starts] for e, starts in zip(episodes, estimated)
    ]
    shares = rollout_shares(episodes, keys, groups, options)
    for episode, starts, episode_keys in zip(episodes, estimated, keys):
        boundaries = []
        for step, (start, key) in enumerate(zip(starts, episode_keys)):
            prefix = episode.response_ids[:start]
            through = [s for s in groups[id(episode)] if s.response_ids[:start] == prefix]
            siblings: tuple[float, ...] = ()
            if options.reuse_samples or (step == 0 and options.root_value == "group"):
                siblings = tuple(s.reward for s in through if s is not episode)
            if step == 0 and options.root_value == "group" and siblings:
                rollouts = 0
            else:
                rollouts = max(0, shares[key] - len(siblings))
            if key not in index:
                plan.plain_rollouts += options.k
                index[key] = None
            state = None
            if rollouts:
                if index[key] is None:
                    index[key] = len(plan.states)
                    plan.states.append(State(episode.problem, episode.prompt_ids, prefix, step))
                    plan.rollouts.append(0)
                    plan.through.append(through)
                state = index[key]
                plan.rollouts[state] = max(plan.rollouts[state], rollouts)
            boundaries.append(Boundary(state, rollouts, siblings))
        plan.boundaries.append(boundaries)
    return plan


def rollout_shares(
    episodes: Sequence[Episode], keys: Sequence[Sequence[tuple[int, ...]]], groups: dict[int, list[Episode]],
    options: VinePPOOptions,
) -> dict[tuple[int, ...], int]:
    """Each unique state's share of the iteration's K x states rollouts (`k_allocation`): K, or in proportion to
    its prompt's reward spread with at least 1 ("group_spread"; a state shared by two groups takes the larger
    spread). `keys[i]`: the token prefixes of episode i's estimated boundaries. Reads the samples' rewards only,
    never a rollout."""
    spread_of = {id(group): statistics.pstdev([e.reward for e in group]) for group in groups.values()}
    spreads: dict[tuple[int, ...], float] = {}
    for episode, episode_keys in zip(episodes, keys):
        spread = spread_of[id(groups[id(episode)])]
        for key in episode_keys:
            spreads[key] = max(spreads.get(key, 0.0), spread)
    total = sum(spreads.values())
    if options.k_allocation == "uniform" or total == 0:
        return dict.fromkeys(spreads, options.k)
    flat = sum(1 for spread in spreads.values() if spread == 0)  # states of prompts whose samples all agree: 1 each
    per_spread = (options.k * len(spreads) - flat) / total
    return {key: max(1, round(spread * per_spread)) for key, spread in spreads.items()}


def vine_credit(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """Fill `step_starts`, `step_values` and `advantages` of every episode with `algo.vineppo`'s settings, and
    append the rollouts it trains on (`train_rollouts`) to `episodes`, or remove the samples it skips
    (`skip_agreeing_groups`: their advantages 0, as GRPO's); return the rollouts' metrics: the states rolled out,
    the tokens they generated, the share with no parseable answer, the share of the paper's K-per-state rollouts
    not sampled (`value/mc_saved`, of the states of the samples valued), the number trained on
    (`value/rollouts_trained`), the share of samples skipped (`value/skipped`) and the share of line boundaries
    after s_0 merged away by `min_step_surprisal` (`value/steps_merged`)."""
    options = ctx.cfg.algo.vineppo
    skipped = agreeing_groups(episodes) if options.skip_agreeing_groups else []
    for episode in skipped:
        episode.step_starts, episode.step_values = [0], [episode.reward]
        episode.advantages = [0.0] * len(episode.response_ids)
    samples = len(episodes)
    skipped_ids = {id(e) for e in skipped}
    episodes[:] = [e for e in episodes if id(e) not in skipped_ids]
    token_texts = TokenTexts(ctx.decode)
    estimated = []
    lines = merged = 0  # line boundaries after s_0, and those `min_step_surprisal` merged away
    for episode in episodes:
        line_starts = split_steps(token_texts(episode.response_ids))
        starts = merge_unsurprising_steps(line_starts, episode.sample_logprobs, options.min_step_surprisal)
        lines, merged = lines + len(line_starts) - 1, merged + len(line_starts) - len(starts)
        estimated.append(starts[: estimated_boundaries(len(starts), options.max_value_steps)])
        episode.step_starts = starts if options.after_value_cap == "zero" else estimated[-1]
    plan = plan_values(episodes, estimated, options)

    with ctx.bars.phase("MC rollouts", len(plan.states)) as bar:
        sampled = MCValues(rollout(
            ctx.engine, ctx.task, ctx.decode, plan.states, plan.rollouts, ctx.sampling, ctx.generator, bar.advance
        ))
    state_rewards = [[r.reward for r in rollouts] for rollouts in sampled.rollouts]
    for episode, boundaries in zip(episodes, plan.boundaries):
        unestimated = len(episode.step_starts) - len(boundaries)  # after the cap, "zero": V = R
        episode.step_values = [b.value(state_rewards) for b in boundaries] + [episode.reward] * unestimated
        step_adv = step_advantages(episode.step_values, episode.reward)
        episode.advantages = spread_over_tokens(step_adv, episode.step_starts, len(episode.response_ids))
    trained = rollout_episodes(plan, sampled.rollouts, options.train_rollouts, random.Random(ctx.seed))
    episodes.extend(trained)
    rolled = sum(plan.rollouts)
    return {
        "value/states": len(plan.states),
        "tokens/mc": sampled.tokens,
        "value/mc_unparsed": sampled.unparsed / max(1, rolled),
        "value/mc_saved": 1 - rolled / max(1, plan.plain_rollouts),
        "value/rollouts_trained": len(trained),
        "value/skipped": len(skipped) / max(1, samples),
        "value/steps_merged": merged / max(1, lines),
    }


def agreeing_groups(episodes: Sequence[Episode]) -> list[Episode]:
    """The samples of every prompt with two or more samples that all got the same reward."""
    return [e for group in group_by_prompt(list(episodes)) if len(group) > 1 and len({x.reward for x in group}) == 1
            for e in group]


def rollout_episodes(
    plan: ValuePlan, rollouts: Sequence[Sequence[Rollout]], share: float, rng: random.Random
) -> list[Episode]:
    """`share` of all the rollouts (chosen by `rng`, never by reward) as episodes to train on: rollout j of state s
    (`plan.states[s]`) is a response to the prompt + s's response tokens, and every token of it gets R_j - b_j,
    where b_j is the mean reward of s's other children: its other rollouts and the samples whose responses pass
    through s (`plan.through[s]`; each an independent continuation of s, so b_j is independent of rollout j and
    the advantage's mean is Q - V(s)). No per-state std scaling: a state whose children agree gives its rollouts
    advantage 0."""
    chosen = rng.sample([(s, j) for s, group in enumerate(rollouts) for j in range(len(group))],
                        round(share * sum(map(len, rollouts))))
    states, through = plan.states, plan.through
    out = []
    for s, j in sorted(chosen):
        children = [r.reward for r in rollouts[s]] + [e.reward for e in through[s]]
        own = rollouts[s][j]
        baseline = (sum(children) - own.reward) / (len(children) - 1)
        completion = own.completion
        out.append(Episode(
            prompt_index=through[s][0].prompt_index, problem=states[s].problem, prompt_ids=states[s].tokens,
            response_ids=completion.token_ids, sample_logprobs=completion.logprobs,
            finish_reason=completion.finish_reason, reward=own.reward, parsed=own.grade.parsed, step_starts=[0],
            step_values=[baseline], advantages=[own.reward - baseline] * len(completion.token_ids), rollout=True,
        ))
    return out


@dataclass
class MCValues:
    """Graded rollouts per state, and what follows from them."""

    rollouts: list[list[Rollout]]  # per state, its rollouts

    @property
    def values(self) -> list[float]:
        """Per state, the mean reward of its rollouts."""
        return [sum(r.reward for r in group) / len(group) for group in self.rollouts]

    @property
    def tokens(self) -> int:
        """Generated by all rollouts."""
        return sum(len(r.completion.token_ids) for group in self.rollouts for r in group)

    @property
    def unparsed(self) -> int:
        """Rollouts with no parseable answer."""
        return sum(not r.grade.parsed for group in self.rollouts for r in group)


def mc_values(
    engine: Engine,
    task: Task,
    decode: Callable[[list[int]], str],
    states: Sequence[State],
    k: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> MCValues:
    """The MC value of every state: the mean reward of `k` rollouts sampled from it (vineppo.rollout)."""
    return MCValues(rollout(engine, task, decode, states, k, params, generator, on_progress))
