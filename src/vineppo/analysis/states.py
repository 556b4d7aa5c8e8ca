"""Held-out states of a policy, and three ways to value them: many rollouts (the ground truth), K rollouts
(VinePPO's estimate) and a value network's prediction.

A state is a test prompt plus the first steps of a response the policy sampled to it: the points at which VinePPO
estimates values during training (vineppo.credit.vine), here on problems the run never trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vineppo.credit.critic import predict_values
from vineppo.engine.base import Engine, ProgressCallback, SamplingParams
from vineppo.episodes import Episode, collate
from vineppo.rollout import Rollout, State
from vineppo.steps import TokenTexts, estimated_boundaries, split_steps
from vineppo.tasks.base import Problem


@dataclass(frozen=True)
class HeldOutStates:
    states: list[State]
    responses: int  # responses sampled, one per test problem
    candidates: int  # step boundaries in them, among which `states` were drawn


def held_out_states(
    engine: Engine,
    encode: Callable[[str], list[int]],
    token_texts: TokenTexts,
    problems: Sequence[Problem],
    count: int,
    params: SamplingParams,
    max_steps: int | None,
    generator: torch.Generator,
    rng: random.Random,
    on_progress: ProgressCallback | None = None,
) -> HeldOutStates:
    """One response per problem sampled with `params`, cut into steps as VinePPO cuts them (at most `max_steps` + 1
    estimated boundaries, vineppo.steps.estimated_boundaries), and `count` of all their step boundaries drawn at
    random (all if fewer)."""
    prompts = [encode(p.prompt) for p in problems]
    completions = engine.generate(prompts, 1, params, generator=generator, on_progress=on_progress)
    candidates = []
    for problem, prompt_ids, (completion,) in zip(problems, prompts, completions):
        starts = split_steps(token_texts(completion.token_ids))
        for step, start in enumerate(starts[: estimated_boundaries(len(starts), max_steps)]):
            candidates.append(State(problem, prompt_ids, completion.token_ids[:start], step))
    chosen = sorted(rng.sample(range(len(candidates)), min(count, len(candidates))))
    return HeldOutStates([candidates[i] for i in chosen], len(problems), len(candidates))


def alternative_next_states(
    state: State, rollouts: Sequence[Rollout], token_texts: TokenTexts
) -> tuple[State, State] | None:
    """The states one step after `state` along the first two rollouts whose first steps differ, or None.

    Rollouts that end within their first step are skipped: the state after it would be terminal, where the
    value is the reward itself and a value network is never asked (its last prediction is before eos)."""
    first_step: list[int] | None = None
    for rollout in rollouts:
        token_ids = rollout.completion.token_ids
        starts = split_steps(token_texts(token_ids))
        if len(starts) < 2:
            continue
        step = token_ids[: starts[1]]
        if first_step is None:
            first_step = step
        elif step != first_step:
            return tuple(
                State(state.problem, state.prompt_ids, state.response_ids + s, state.step + 1)
                for s in (first_step, step)
            )
    return None


@torch.no_grad()
def value_network_values(
    model, states: Sequence[State], pad_id: int, device: torch.device, batch_size: int
) -> list[float]:
    """V(state) as the PPO critic reads it at a step boundary (vineppo.credit.critic): the value head's output at the
    position that predicts the first response token after the boundary, i.e. at the state's last token.

    collate() places a response's values at the positions predicting its tokens, so each state is given one
    placeholder response token after the boundary; causal attention keeps it out of the prediction read."""
    model.eval()
    values: list[float] = []
    for begin in range(0, len(states), batch_size):
        chunk = states[begin : begin + batch_size]
        episodes = [
            Episode(0, s.problem, s.prompt_ids, s.response_ids + [pad_id], [0.0] * (len(s.response_ids) + 1), "stop")
            for s in chunk
        ]
        tokens = collate(episodes, pad_id).to(device)
        predicted = predict_values(model, tokens)
        for row, state in enumerate(chunk):
            values.append(predicted[row, tokens.response_mask[row].bool()][len(state.response_ids)].item())
    return values
