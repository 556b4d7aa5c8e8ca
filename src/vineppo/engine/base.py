"""The Engine protocol shared by every sampling backend.

An engine continues arbitrary token prefixes. Policy rollouts are continuations of prompts; VinePPO's Monte Carlo
rollouts are continuations of prompt + partial response. Both go through `Engine.generate`, so the MC value
estimates always use the current policy and the same sampling settings as the training rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

import torch


class ContextLengthError(ValueError):
    """A prefix plus the tokens asked for would not fit in the model's context."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` means greedy decoding (top_p is then ignored)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    """Strings that end a completion like eos does (e.g. the plain prompt format's "\n\n\nProblem:", where a model
    would start a new problem). The completion then ends as the official code records it: without the stop
    string, with eos appended (`end_at_stop_string`)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled continuation of a prefix.

    token_ids: the generated tokens; ends with eos when finish_reason == "stop" (a stop string is replaced by eos).
    logprobs: log-prob of each generated token under the policy's temperature-scaled distribution
        softmax(logits / T) (T = 1 for greedy), before top-p truncation: the same quantity the trainer's
        forward pass recomputes.
    finish_reason: "stop" (emitted eos or a stop string) or "length" (hit max_new_tokens).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]


def end_at_stop_string(
    completion: Completion, stops: Sequence[str], token_texts: Callable[[list[int]], list[str]], eos_token_id: int
) -> Completion:
    """A completion that ended on a stop string, recorded as the official code records it (PAPER-NOTES 2.3:
    the stop string removed, eos appended): the tokens from the first one that lies wholly in or after the stop
    string are dropped (a token holding text before the stop string stays, so no answer text is lost) and eos
    is appended, with a sampler log-prob of 0 (it was not sampled; the trainer recomputes its own). Kept, a stop
    string would become a step of its own whose MC rollouts cannot stop (the engines watch generated text only)
    and run on into a new problem. Other completions are returned unchanged. `token_texts(ids)`: each id's text.
    """
    if completion.finish_reason != "stop" or not stops:
        return completion
    texts = token_texts(completion.token_ids)
    text = "".join(texts)
    found = [text.find(stop) for stop in stops if stop in text]
    if not found:
        return completion
    cut, kept, offset = min(found), 0, 0
    while kept < len(texts) and offset < cut:
        offset += len(texts[kept])
        kept += 1
    return Completion(completion.token_ids[:kept] + [eos_token_id], completion.logprobs[:kept] + [0.0], "stop")


def sample_counts(prefixes: Sequence[Sequence[int]], n: int | Sequence[int]) -> list[int]:
    """The samples an `Engine.generate` call asks of each prefix: `n` of every one, or `n[i]` of prefix i."""
    counts = [n] * len(prefixes) if isinstance(n, int) else list(n)
    if len(counts) != len(prefixes):
        raise ValueError(f"got {len(counts)} sample counts for {len(prefixes)} prefixes")
    if any(count < 1 for count in counts):
        raise ValueError(f"n must be >= 1, got {min(counts)}")
    return counts


def checked_budgets(
    prefixes: Sequence[Sequence[int]], params: SamplingParams, budgets: Sequence[int] | None,
    context: int | None, context_name: str,
) -> list[int]:
    """Validate an `Engine.generate` call and return each prefix's cap on new tokens: `budgets` if given (each in
    1..max_new_tokens), else max_new_tokens. A prefix that, with its budget, would run past `context` (the
    engine's longest sequence, called `context_name` in the message; None: unknown) raises ContextLengthError."""
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if budgets is None:
        budgets = [params.max_new_tokens] * len(prefixes)
    elif len(budgets) != len(prefixes):
        raise ValueError(f"got {len(budgets)} budgets for {len(prefixes)} prefixes")
    for prefix, budget in zip(prefixes, budgets):
        if not 1 <= budget <= params.max_new_tokens:
            raise ValueError(f"a budget of {budget} new tokens is outside 1..max_new_tokens={params.max_new_tokens}")
        if not prefix:
            raise ValueError("cannot continue an empty prefix: it needs at least one token (e.g. BOS)")
        if context is not None and len(prefix) + budget > context:
            raise ContextLengthError(
                f"prefix of {len(prefix)} tokens + max_new_tokens={budget} = {len(prefix) + budget} exceeds "
                f"{context_name}={context} (lower engine.max_new_tokens or shorten the prompts)"
            )
    return list(budgets)


ProgressCallback = Callable[[int], None]
"""Called with the number of prefixes just finished, so callers can advance a progress bar."""


class Engine(Protocol):
    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int | Sequence[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
        on_progress: ProgressCallback | None = None,
        budgets: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` continuations of every prefix (or `n[i]` of prefix i); result[i][j] is the j-th continuation
        of prefixes[i].

        The shared prefix is computed once and its KV cache expanded to its samples. `budgets[i]` (at most
        params.max_new_tokens) caps the new tokens of prefix i; VinePPO gives a step prefix holding j response
        tokens max_new_tokens - j, so an MC rollout is cut off exactly where the full response would have been.
        """
        ...

    def sync_weights(self) -> None:
        """Sample from the policy's current weights from now on; the trainer calls it after every update."""
        ...
