"""A stand-in for the part of vLLM 0.33's API that vineppo.engine.vllm uses, to test the adapter where vLLM cannot
be installed (no CUDA here). Names and shapes follow vLLM 0.33's source: `LLM(model=..., **engine_args)`,
`LLM.generate(list of {"prompt_token_ids": ids}, sampling_params=list, use_tqdm=...)` returning RequestOutputs in
input order, `SamplingParams`, `CompletionOutput.logprobs` as one {token id: Logprob} dict per position,
`LLM.apply_model(func)` calling func on the model (which has `load_weights(iterable of (name, tensor))`), and
`LLM.reset_prefix_cache()`. It samples with vineppo's HF engine from its own copy of the weights, loaded from the
model path and changed only through `load_weights`, as vLLM's are."""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vineppo.engine.base import SamplingParams as OurSamplingParams
from vineppo.engine.hf import HFEngine


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class _VLLMModel(torch.nn.Module):
    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def load_weights(self, weights) -> set[str]:
        params, loaded = self.module.state_dict(), set()
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)
                loaded.add(name)
        return loaded


class LLM:
    built: list["LLM"] = []

    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.92, **kwargs):
        self.args = {"model": model, "dtype": dtype, "seed": seed, "gpu_memory_utilization": gpu_memory_utilization,
                     **kwargs}
        module = AutoModelForCausalLM.from_pretrained(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = _VLLMModel(module)
        self.engine = HFEngine(module, self.tokenizer)
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=module.config.max_position_embeddings)
        )
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.prefix_cache_resets = 0
        LLM.built.append(self)

    def apply_model(self, func):
        return [func(self.model)]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.prefix_cache_resets += 1
        return True

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, **kwargs) -> list[RequestOutput]:
        assert len(prompts) == len(sampling_params)
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            ids = prompt["prompt_token_ids"]
            self.requests.append((ids, params))
            ours = OurSamplingParams(params.temperature, params.top_p, params.max_tokens, tuple(params.stop or ()))
            generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
            (completions,) = self.engine.generate([ids], params.n, ours, generator=generator)
            outputs.append(RequestOutput(ids, [
                CompletionOutput(
                    j, self.tokenizer.decode(c.token_ids), c.token_ids, sum(c.logprobs),
                    [{token: Logprob(lp, rank=1)} for token, lp in zip(c.token_ids, c.logprobs)], c.finish_reason,
                )
                for j, c in enumerate(completions)
            ]))
        return outputs
