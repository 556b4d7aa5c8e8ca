"""VinePPO credit: Monte Carlo values at every step boundary, one-step TD advantages per step.

For a response cut into steps y_0 .. y_{n-1}, state s_i = prompt + y_0 .. y_{i-1}. V(s_i) is the mean reward of
K continuations sampled by the current policy from s_i with the training sampling settings (an unbiased MC
estimate). The step reward is 0 except R (the outcome reward) on the last step, and V after the last step is 0,
so A_i = V(s_{i+1}) - V(s_i) for i < n-1 and A_{n-1} = R - V(s_{n-1}); every token of step i gets A_i.
This is the official code's `_compute_step_advantages` (PAPER-NOTES 3.3). The KL penalty is not in the return:
it is a loss term (vineppo.losses).

With a cap on estimated boundaries (`algo.vineppo.max_value_steps` = c), s_0 .. s_c are estimated (c + 1
values, as the official `max_step_for_value_estimation`). The steps after s_c, `after_value_cap`: "zero" fills
their values with R as the official code does (V_i = r_i + V_{i+1}), so the step at the cap gets R - V(s_c) and every later step 0;
"merge" (a departure) merges them into the step at the cap, so all their tokens share R - V(s_c) instead of
learning nothing.

Requests are deduplicated by exact token prefix, so V(s_0) (the bare prompt) is computed once for all samples of
a prompt, as in the official code. With `root_value` "group" (a departure) V(s_0) comes from the prompt's other
samples instead (`leave_one_out_roots`), and the prompt is not rolled out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from vineppo.credit.group import leave_one_out_means
from vineppo.engine.base import Engine, SamplingParams
from vineppo.episodes import Episode, group_by_prompt
from vineppo.rollout import Rollout, State, rollout
from vineppo.steps import TokenTexts, estimated_boundaries, split_steps, step_spans
from vineppo.tasks.base import Task

if TYPE_CHECKING:
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


def leave_one_out_roots(episodes: Sequence[Episode]) -> dict[int, float]:
    """V(s_0) of each episode (by `id`) from its prompt's other samples: the mean of their rewards. Its expectation
    is V(s_0) and it does not depend on the episode's own reward, so R - V-hat(s_0) stays an unbiased advantage
    (as RLOO's baseline). An episode alone with its prompt has no other samples and no entry."""
    roots = {}
    for group in group_by_prompt(list(episodes)):
        if len(group) > 1:
            roots.update(zip(map(id, group), leave_one_out_means([e.reward for e in group])))
    return roots


def vine_credit(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """Fill `step_starts`, `step_values` and `advantages` of every episode with `algo.vineppo`'s settings; return
    the rollouts' metrics: the states valued, the tokens they generated and the share with no parseable answer."""
    options = ctx.cfg.algo.vineppo
    token_texts = TokenTexts(ctx.decode)
    states: dict[tuple[int, ...], int] = {}  # unique prefix -> its index in `requests`
    requests: list[State] = []
    roots = leave_one_out_roots(episodes) if options.root_value == "group" else {}
    episode_states: list[list[int | None]] = []  # per episode, each boundary's request index (None: from `roots`)
    for episode in episodes:
        starts = split_steps(token_texts(episode.response_ids))
        estimated = starts[: estimated_boundaries(len(starts), options.max_value_steps)]
        episode.step_starts = starts if options.after_value_cap == "zero" else estimated
        indices = []
        for step, start in enumerate(estimated):
            if step == 0 and id(episode) in roots:
                indices.append(None)
                continue
            key = tuple(episode.prompt_ids + episode.response_ids[:start])
            if key not in states:
                states[key] = len(requests)
                requests.append(State(episode.problem, episode.prompt_ids, episode.response_ids[:start], step))
            indices.append(states[key])
        episode_states.append(indices)

    with ctx.bars.phase("MC rollouts", len(requests)) as bar:
        rollouts = mc_values(
            ctx.engine, ctx.task, ctx.decode, requests, options.k, ctx.sampling, ctx.generator, bar.advance
        )
    for episode, indices in zip(episodes, episode_states):
        unestimated = len(episode.step_starts) - len(indices)  # after the cap, "zero": V = R
        estimates = [roots[id(episode)] if i is None else rollouts.values[i] for i in indices]
        episode.step_values = estimates + [episode.reward] * unestimated
        step_adv = step_advantages(episode.step_values, episode.reward)
        episode.advantages = spread_over_tokens(step_adv, episode.step_starts, len(episode.response_ids))
    return {
        "value/states": len(requests),
        "tokens/mc": rollouts.tokens,
        "value/mc_unparsed": rollouts.unparsed / max(1, len(requests) * options.k),
    }


@dataclass
class MCValues:
    values: list[float]  # per state, the mean reward of its rollouts
    rollouts: list[list[Rollout]]  # per state, its rollouts
    tokens: int  # generated by all rollouts
    unparsed: int  # rollouts with no parseable answer


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
    graded = rollout(engine, task, decode, states, k, params, generator, on_progress)
    flat = [r for group in graded for r in group]
    return MCValues(
        values=[sum(r.reward for r in group) / k for group in graded],
        rollouts=graded,
        tokens=sum(len(r.completion.token_ids) for r in flat),
        unparsed=sum(not r.grade.parsed for r in flat),
    )
