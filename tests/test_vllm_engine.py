"""The optional vLLM engine. Where vLLM is not installed (here: no CUDA) the adapter runs against tests/fake_vllm.py,
which follows vLLM 0.33's API; the last test runs the real vLLM where it is importable and a GPU is present."""

import importlib.util
import sys

import pytest
import torch

import fake_vllm
from tiny import TINY

from vineppo.cli import main
from vineppo.config import load_config
from vineppo.engine.base import SamplingParams
from vineppo.engine.vllm import VLLMEngine
from vineppo.episodes import TokenBatch
from vineppo.models import load_model, load_tokenizer
from vineppo.sft import ensure_sft_model
from vineppo.update import forward_logprobs

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture
def sft_model(sft_cache) -> str:
    return str(ensure_sft_model(load_config(None, TINY)))


@pytest.fixture
def with_fake_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    fake_vllm.LLM.built.clear()
    return fake_vllm


def engine_on(path: str) -> tuple[VLLMEngine, torch.nn.Module, object]:
    policy, tokenizer = load_model(path, "float32", torch.device("cpu")), load_tokenizer(path)
    return VLLMEngine(path, policy, tokenizer, dtype="float32", gpu_memory_utilization=0.3), policy, tokenizer


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_engine_says_how_to_install_it(sft_model, capsys):
    assert main(["eval", "--model", sft_model, *TINY, "engine.name=vllm"]) == 2
    err = capsys.readouterr().err
    assert "engine.name=vllm needs vLLM" in err and "pip install vllm" in err


def test_requests_carry_the_sampling_settings_and_completions_their_log_probs(sft_model, with_fake_vllm):
    engine, policy, tokenizer = engine_on(sft_model)
    llm = with_fake_vllm.LLM.built[-1]
    assert llm.args["enable_prefix_caching"] is True and llm.args["logprobs_mode"] == "processed_logprobs"
    assert llm.args["gpu_memory_utilization"] == 0.3 and "distributed_executor_backend" not in llm.args
    prefixes = [tokenizer("3+4=").input_ids, tokenizer("12-5=7;").input_ids]
    params = SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=12, stop=("\n",))
    out = engine.generate(prefixes, 3, params, generator=torch.Generator().manual_seed(1), budgets=[5, 9])

    sent = [p for _, p in llm.requests]
    assert [p.max_tokens for p in sent] == [5, 9] and all(p.n == 3 and p.logprobs == 0 for p in sent)
    assert all(p.stop == ["\n"] and p.include_stop_str_in_output and p.temperature == 0.7 for p in sent)
    assert sent[0].seed != sent[1].seed  # each request its own seed (vLLM adds the sample index)
    assert [len(group) for group in out] == [3, 3]
    ended_on_stop = differs_from_unprocessed = 0
    for prefix, group, budget, answered in zip(prefixes, out, [5, 9], llm.answered):
        for completion, raw in zip(group, answered.outputs):
            assert 1 <= len(completion.token_ids) <= budget + 1
            assert len(completion.logprobs) == len(completion.token_ids)
            sampled, sampled_logprobs = completion.token_ids, completion.logprobs
            if raw.stop_reason == "\n":  # recorded without the stop string, eos appended
                assert "\n" not in tokenizer.decode(sampled) and completion.finish_reason == "stop"
                assert sampled[-1] == tokenizer.eos_token_id and sampled_logprobs[-1] == 0.0
                assert sampled[:-1] == raw.token_ids[: len(sampled) - 1]
                sampled, sampled_logprobs = sampled[:-1], sampled_logprobs[:-1]
                ended_on_stop += 1
            else:
                assert sampled == raw.token_ids
                assert completion.finish_reason == "stop" or len(sampled) == budget
            # the sampled tokens' log-probs as vLLM reports them (renormalised over the top-p nucleus), not the
            # most likely token's the stand-in lists first
            processed = fake_vllm.processed_logprobs(policy, prefix, sampled, fake_vllm.SamplingParams(
                temperature=0.7, top_p=0.8)).gather(1, torch.tensor(sampled)[:, None])[:, 0]
            assert torch.allclose(processed, torch.tensor(sampled_logprobs), atol=1e-4)
            ids = torch.tensor([prefix + sampled])
            mask = torch.zeros_like(ids, dtype=torch.float)
            unprocessed = forward_logprobs(policy, TokenBatch(ids, torch.ones_like(ids), mask, mask, mask), 0.7)
            differs_from_unprocessed += not torch.allclose(unprocessed[0, len(prefix) - 1 :], processed, atol=1e-4)
    assert differs_from_unprocessed > 0  # the test can tell vLLM's log-probs from the HF engine's
    assert ended_on_stop > 0

    uneven = engine.generate(prefixes, [2, 5], params, generator=torch.Generator().manual_seed(1))
    sent = [p for _, p in llm.requests[-2:]]
    assert [p.n for p in sent] == [2, 5] and [len(group) for group in uneven] == [2, 5]
    assert sent[1].seed == sent[0].seed + 2  # past the seeds of the first request's 2 samples


def test_sync_weights_loads_the_policys_weights_in_place_and_drops_the_prefix_cache(sft_model, with_fake_vllm):
    engine, policy, _ = engine_on(sft_model)
    llm = with_fake_vllm.LLM.built[-1]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    served = llm.model.module.state_dict()
    assert not all(torch.equal(served[n], t) for n, t in policy.state_dict().items())
    engine.sync_weights()
    served = llm.model.module.state_dict()
    assert all(torch.equal(served[n], t) for n, t in policy.state_dict().items())
    assert llm.prefix_cache_resets == 1


@pytest.mark.slow
def test_evaluation_with_vllm_does_not_load_the_model_a_second_time(sft_model, with_fake_vllm, monkeypatch, tmp_path):
    import vineppo.setup

    def refuse(*args, **kwargs):
        raise AssertionError("vineppo eval loaded the HF model beside vLLM")

    monkeypatch.setattr(vineppo.setup, "load_model", refuse)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", sft_model, *TINY, "engine.name=vllm", "--samples", "2", "--output", str(out)]) == 0
    assert with_fake_vllm.LLM.built[-1].model is not None  # vLLM (the fake) loaded the weights itself
    assert "eval/pass@2" in out.read_text()


@pytest.mark.slow
def test_training_with_the_vllm_engine_syncs_after_every_update(tmp_path, sft_cache, with_fake_vllm):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2", "engine.name=vllm"]) == 0
    llm = with_fake_vllm.LLM.built[-1]
    assert llm.prefix_cache_resets == 2
    final = load_file(run / "checkpoints" / "iter_000002" / "policy" / "model.safetensors")
    served = llm.model.module.state_dict()
    assert all(torch.equal(served[name], tensor) for name, tensor in final.items())


@pytest.mark.skipif(not (HAVE_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA GPU")
def test_the_real_vllm_samples_with_log_probs_close_to_the_trainers(sft_model):
    path = sft_model
    policy = load_model(path, "float32", torch.device("cuda"))
    tokenizer = load_tokenizer(path)
    engine = VLLMEngine(path, policy, tokenizer, dtype="float32", gpu_memory_utilization=0.2)
    prefix = tokenizer("3+4=").input_ids
    (group,) = engine.generate([prefix], 4, SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=12))
    for completion in group:
        ids = torch.tensor([prefix + completion.token_ids], device="cuda")
        mask = torch.zeros_like(ids, dtype=torch.float)
        recomputed = forward_logprobs(policy, TokenBatch(ids, torch.ones_like(ids), mask, mask, mask), 0.7)
        assert torch.allclose(recomputed[0, len(prefix) - 1 :].cpu(), torch.tensor(completion.logprobs), atol=1e-2)
    engine.sync_weights()
