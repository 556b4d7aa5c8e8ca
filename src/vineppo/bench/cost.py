"""What a run would cost where generation is cheaper relative to training than on this CPU, as on GPUs with vLLM.

An iteration's cost is counted in trained tokens: one token (prompt or response) through a training forward and
backward costs 1; one generated token (a policy sample or an MC rollout) costs `generation`. The no-grad forwards
(old and reference log-probs, the critic's predictions) are left out: about the same share for every method of
the PPO family. The constants come from the paper's timings (../shared/PAPER-NOTES.md 1.3, [3P-c]: seconds per
iteration on MATH), under stated assumptions about the paper's token counts (512 episodes per iteration, prompts of
about 200 and responses of about 400 tokens, 2 epochs; PPO trains a value network of the policy's size too):

- 7B, 8xH100: vLLM generates about 30,000 tokens/s ([3P-c]), so a generated token costs 1/30,000 s. PPO's 312 s
  per iteration minus its 512 x 400 generated tokens (7 s) leaves 305 s for 512 x 600 x 2 epochs x 2 models =
  1.23M trained tokens: 2.5e-4 s each. Generation: (1/30,000) / 2.5e-4 = 0.13 trained tokens.
- 1.1B, 4xA100: no throughput figure; PPO's 80 s and VinePPO's 380 s per iteration (the 5x of [3P-b]) are two
  equations for the two per-token costs, with VinePPO's MC tokens per iteration taken from the 7B solution
  (583 s - 7 s - 152 s of its policy update = 424 s at 30,000 tokens/s: 12.7M; the same data, K and lengths):
  205K g + 1.23M u = 80 and 12.9M g + 0.61M u = 380 give g = 2.7e-5 s, u = 6.1e-5 s: 0.44 trained tokens.
- This CPU: the run's own timings, sampling + credit seconds per generated token over update seconds per trained
  token (`measured_generation_cost`); with the tiny model generation costs about as much as training here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GENERATED = ("tokens/policy", "tokens/mc")
TRAINED = ("tokens/update", "tokens/value_update")


@dataclass(frozen=True)
class CostModel:
    name: str
    generation: float  # the cost of one generated token, in trained tokens


GPU_COSTS = (CostModel("gpu_1b", 0.44), CostModel("gpu_7b", 0.13))


def generated_tokens(record: dict) -> int:
    """Tokens an iteration generated (policy samples + MC rollouts), from its metrics (a trainer iteration's dict)."""
    return sum(record.get(key, 0) for key in GENERATED)


def trained_tokens(record: dict) -> int:
    """Tokens an iteration trained on (the policy's and the value network's updates, every epoch)."""
    return sum(record.get(key, 0) for key in TRAINED)


def iteration_cost(record: dict, model: CostModel) -> float:
    """An iteration's cost in trained tokens, from its metrics (a trainer iteration's dict)."""
    return model.generation * generated_tokens(record) + trained_tokens(record)


def update_seconds_per_trained_token(records: Sequence[dict]) -> float | None:
    """The update's seconds per trained token over the records; None where they trained nothing or took no time."""
    update_seconds = sum(r["time/update"] for r in records)
    trained = sum(trained_tokens(r) for r in records)
    return update_seconds / trained if trained and update_seconds else None


def measured_generation_cost(records: Sequence[dict]) -> float | None:
    """This machine's generation cost in trained tokens, from the runs' phase timings: (seconds of sampling and
    credit per generated token) / (seconds of update per trained token); None where the records generated or
    trained nothing."""
    generation_seconds = sum(r["time/sample"] + r["time/credit"] for r in records)
    generated = sum(generated_tokens(r) for r in records)
    update_cost = update_seconds_per_trained_token(records)
    if not (generated and update_cost):
        return None
    return (generation_seconds / generated) / update_cost
