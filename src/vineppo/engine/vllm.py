"""An optional rollout engine on vLLM (`engine.name=vllm`), for GPUs.

vLLM runs in the training process on the same GPU (as TRL's "colocate" mode does), from the policy's starting
weights, with prefix caching on: VinePPO's K rollouts of a step prefix, and the step prefixes of one response,
share their cached KV blocks. After every policy update `sync_weights` copies the policy's weights into vLLM's
model in place (no restart, nothing written to disk) and drops the prefix cache, whose blocks were computed with
the old weights.

The sampled tokens' log-probs come back with the completions (`logprobs_mode="processed_logprobs"`: of the
temperature-scaled distribution, renormalised over the top-p nucleus, where the HF engine reports them before
the top-p cut); the trainer logs their mean gap to its own recomputation as `logprob_gap/sampler_vs_trainer`.

Written against vLLM 0.33's API (`LLM`, `SamplingParams`, `LLM.apply_model` with the model's `load_weights`,
`reset_prefix_cache`), read from its source; vLLM is not a
dependency, is imported only here, and this module has not been run against a real vLLM (none could be installed
where it was written: docs/performance.md says what was and was not run).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import accumulate

import torch

from vineppo.engine.base import (
    Completion, ProgressCallback, SamplingParams, checked_budgets, end_at_stop_string, sample_counts,
)
from vineppo.steps import TokenTexts


class VLLMMissingError(ImportError):
    """engine.name=vllm without vLLM installed; the message says how to install it."""


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMMissingError(
            "engine.name=vllm needs vLLM, which vineppo does not install: pip install vllm (Linux with a CUDA "
            "GPU); or use engine.name=hf"
        ) from exc
    return vllm


class VLLMEngine:
    """The Engine protocol on a `vllm.LLM` built from `model_path`, kept in step with `policy` by `sync_weights`.

    With several processes (accelerate / torchrun) each builds its own vLLM on its own GPU with vLLM's
    "external_launcher" backend, as TRL's colocate mode does; vLLM's seed is then the process's rank.
    """

    def __init__(
        self, model_path: str, policy: torch.nn.Module | None, tokenizer, *, dtype: str, gpu_memory_utilization: float,
        seed: int = 0, rank: int | None = None, trust_remote_code: bool = False,
    ) -> None:
        vllm = import_vllm()
        # the engine core in this process, so its model (and its weights) can be reached and replaced in place
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        launcher = {"distributed_executor_backend": "external_launcher"} if rank is not None else {}
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path, dtype=dtype, seed=seed if rank is None else rank,
            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
            logprobs_mode="processed_logprobs", trust_remote_code=trust_remote_code, **launcher,
        )
        self.policy = policy
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.token_texts = TokenTexts(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self.max_context = self.llm.llm_engine.model_config.max_model_len

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Load the policy's current weights into vLLM's model (tensor by tensor, on the GPU) and drop every
        cached prefix."""
        weights = [(name, tensor.detach()) for name, tensor in self.policy.state_dict().items()]

        def load(model) -> None:  # runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): no copy, no pickling
            model.load_weights(weights)

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int | Sequence[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
        on_progress: ProgressCallback | None = None,
        budgets: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` continuations of every prefix, or `n[i]` of prefix i (see `vineppo.engine.base.Engine`).
        vLLM draws its own random numbers: `generator` only seeds the requests (with one seed s drawn from it,
        request i gets s + the samples asked of the requests before it)."""
        counts = sample_counts(prefixes, n)
        budgets = checked_budgets(prefixes, params, budgets, self.max_context, "vLLM's max_model_len")
        seed = None
        if generator is not None:  # the trainer's generator lives on the policy's device
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        requests = [{"prompt_token_ids": list(prefix)} for prefix in prefixes]
        offsets = [0, *accumulate(counts)][:-1]
        sampling = [self.sampling_params(count, params, budget, None if seed is None else seed + offset)
                    for count, budget, offset in zip(counts, budgets, offsets)]
        outputs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        results = [
            [end_at_stop_string(completion_of(o), params.stop, self.token_texts, self.eos_token_id)
             for o in sorted(out.outputs, key=lambda o: o.index)]
            for out in outputs
        ]
        if on_progress is not None:
            on_progress(len(prefixes))
        return results

    def sampling_params(self, n: int, params: SamplingParams, max_tokens: int, seed: int | None):
        greedy = params.greedy
        return self._vllm.SamplingParams(
            n=n, temperature=0.0 if greedy else params.temperature, top_p=1.0 if greedy else params.top_p,
            max_tokens=max_tokens, stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=0,
            seed=seed,
        )


def completion_of(output) -> Completion:
    """A vLLM CompletionOutput as a Completion: the sampled tokens, each one's log-prob (from the per-position
    {token id: Logprob} dicts, which hold the sampled token whatever `logprobs` asks for), and "stop" for eos or
    a stop string, "length" otherwise."""
    token_ids = list(output.token_ids)
    logprobs = [float(position[token].logprob) for token, position in zip(token_ids, output.logprobs)]
    return Completion(token_ids, logprobs, "stop" if output.finish_reason == "stop" else "length")
