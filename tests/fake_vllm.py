"""A stand-in for the part of vLLM 0.33's API that vineppo.engine.vllm uses, to test the adapter where vLLM cannot
be installed (no CUDA here). Names and shapes follow vLLM 0.33's source: `LLM(model=..., **engine_args)`,
`LLM.generate(list of {"prompt_token_ids": ids}, sampling_params=list, use_tqdm=...)` returning RequestOutputs in
input order, `SamplingParams`, `CompletionOutput.logprobs` as one {token id: Logprob} dict per position,
`LLM.apply_model(func)` calling func on the model (which has `load_weights(iterable of (name, tensor))`), and
`LLM.reset_prefix_cache()`. It samples with vineppo's HF engine from its own copy of the weights, loaded from the
model path and changed only through `load_weights`, as vLLM's are; but it answers as vLLM does, not as that
engine: a stop string stays in the output (`include_stop_str_in_output`), the log-probs are vLLM's
"processed_logprobs" (of the temperature-scaled distribution renormalised over the top-p nucleus, where the HF
engine reports them before the cut), and each position's dict also holds the most likely token when another was
sampled, listed first. So the adapter's own handling of vLLM's answers is what the tests see."""

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
        self.answered: list[RequestOutput] = []
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
            ours = OurSamplingParams(params.temperature, params.top_p, params.max_tokens)  # stops: see _answer
            generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
            (completions,) = self.engine.generate([ids], params.n, ours, generator=generator)
            outputs.append(RequestOutput(ids, [self._answer(j, ids, c, params) for j, c in enumerate(completions)]))
        self.answered.extend(outputs)
        return outputs

    def _answer(self, index: int, prompt: list[int], completion, params: SamplingParams) -> CompletionOutput:
        token_ids, finish_reason, stop_reason = completion.token_ids, completion.finish_reason, None
        for end in range(1, len(token_ids) + 1):  # vLLM stops at the token completing a stop string, keeping it
            hit = [stop for stop in params.stop or () if stop in self.tokenizer.decode(token_ids[:end])]
            if hit:
                token_ids, finish_reason, stop_reason = token_ids[:end], "stop", hit[0]
                break
        positions = []
        for token, row in zip(token_ids, processed_logprobs(self.model.module, prompt, token_ids, params)):
            best = int(row.argmax())
            position = {best: Logprob(float(row[best]), rank=1)} if best != token else {}
            position[token] = Logprob(float(row[token]), rank=int((row > row[token]).sum()) + 1)
            positions.append(position)
        text = self.tokenizer.decode(token_ids)
        return CompletionOutput(index, text, token_ids, None, positions, finish_reason, stop_reason)


@torch.no_grad()
def processed_logprobs(module, prompt: list[int], token_ids: list[int], params: SamplingParams) -> torch.Tensor:
    """[len(token_ids), V]: per generated position, the log-probs of the distribution vLLM samples from: the
    logits / T, cut to the top-p nucleus and renormalised (-inf outside it)."""
    sequence = torch.tensor([prompt + token_ids])
    logits = module(input_ids=sequence).logits[0, len(prompt) - 1 : -1].float() / params.temperature
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # the mass before a token already fills top_p
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ~outside)
    return torch.log_softmax(logits.masked_fill(~keep, float("-inf")), -1)
