"""The character tokenizer, the tiny model factory, model loading errors, SFT and its cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoModelForCausalLM, AutoTokenizer

from vineppo.sft import warm_start
from vineppo.config import ArithmeticConfig, Config, TinyModelConfig, TinySFTConfig
from vineppo.models import (
    ModelLoadError,
    build_char_tokenizer,
    build_tiny_model,
    load_model,
    load_tokenizer,
    resolve_device,
)
from vineppo.sft import ensure_sft_model, train_sft
from vineppo.sft.examples import IGNORE, Example, collate, encode_examples
from vineppo.tasks.arithmetic import ArithmeticTask

TEXT = "5+3*4\n5+3=8\n8*4=2\n#2"
SMALL_MODEL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(ArithmeticConfig(num_ops=2, train_size=64, test_size=8))


@pytest.fixture(scope="module")
def tokenizer(task):
    return build_char_tokenizer(task.alphabet)


def test_tokenizer_is_one_token_per_character_with_bos(tokenizer, task):
    assert len(tokenizer) == len(task.alphabet) + 3
    ids = tokenizer(TEXT).input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(TEXT) + 1
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == list(TEXT)
    assert tokenizer(TEXT, add_special_tokens=False).input_ids == ids[1:]
    with_specials = ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == TEXT
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<bos>", "<eos>"}


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert loaded.decode(loaded(TEXT).input_ids, skip_special_tokens=True) == TEXT
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )


def test_tiny_model_forward(tokenizer):
    model = build_tiny_model(SMALL_MODEL, tokenizer)
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tokenizer)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_load_tokenizer_pads_with_eos_when_it_has_no_pad(tokenizer, tmp_path):
    model = build_tiny_model(SMALL_MODEL, tokenizer)
    model.save_pretrained(tmp_path)
    no_pad = build_char_tokenizer("0123")
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).pad_token == "<eos>"
    loaded = load_model(tmp_path, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16


@pytest.mark.slow
def test_sft_masks_the_prompt_and_lowers_the_loss(tokenizer, task):
    problem = task.train_problems()[0]
    ((ids, prompt_len),) = encode_examples(tokenizer, [problem])
    batch = collate([Example(ids, prompt_len), Example(ids[:-3], prompt_len)], tokenizer.pad_token_id)
    assert prompt_len == len(problem.prompt) + 1 and ids[-1] == tokenizer.eos_token_id
    assert (batch["labels"][0, :prompt_len] == IGNORE).all()
    assert batch["labels"][0, prompt_len:].tolist() == ids[prompt_len:]
    assert (batch["labels"][1, len(ids) - 3 :] == IGNORE).all()
    assert batch["attention_mask"][1].sum() == len(ids) - 3

    torch.manual_seed(0)
    model = build_tiny_model(SMALL_MODEL, tokenizer)
    stats = train_sft(model, tokenizer, task.train_problems(), TinySFTConfig(steps=30, batch_size=16, lr=1e-2, warmup_steps=3))
    assert stats["final_loss"] < 0.7 * stats["first_loss"]
    assert stats["seconds"] > 0 and stats["tokens_per_second"] > 0


@pytest.mark.parametrize("max_grad_norm", [0.05, None])
def test_sft_clips_the_gradient_norm_before_each_step(tokenizer, task, max_grad_norm):
    """The gradient's global norm at every optimizer step is at most max_grad_norm; unclipped it is above it, so
    the bound is the clipping's doing."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        torch.manual_seed(0)
        model = build_tiny_model(SMALL_MODEL, tokenizer)
        sft = TinySFTConfig(steps=3, batch_size=8, warmup_steps=1, max_grad_norm=max_grad_norm)
        train_sft(model, tokenizer, task.train_problems(), sft)
    finally:
        handle.remove()
    assert len(norms) == 3
    if max_grad_norm is None:
        assert min(norms) > 0.05
    else:
        assert max(norms) <= max_grad_norm * (1 + 1e-5)


def test_ensure_sft_model_caches_and_saves_a_loadable_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VINEPPO_CACHE", str(tmp_path))
    cfg = Config.model_validate(
        {
            "model": {"tiny": {**SMALL_MODEL.model_dump(), "sft": {"steps": 5, "batch_size": 8, "warmup_steps": 1}}},
            "task": {"arithmetic": {"num_ops": 2, "train_size": 32, "test_size": 4}},
            "logging": {"progress": False},
        }
    )
    calls = []
    real_train = warm_start.train_sft
    monkeypatch.setattr(warm_start, "train_sft", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    path = ensure_sft_model(cfg)
    assert path.parent == tmp_path / "sft" and len(calls) == 1
    assert ensure_sft_model(cfg) == path and len(calls) == 1
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert json.loads((path / "sft.json").read_text())["stats"]["seconds"] > 0

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.hidden_size == 32 and tok.decode(tok(TEXT).input_ids, skip_special_tokens=True) == TEXT

    changed = cfg.model_copy(deep=True)
    changed.model.tiny.sft.steps = 6
    assert ensure_sft_model(changed) != path and len(calls) == 2


def test_ensure_sft_model_needs_the_tiny_model():
    cfg = Config.model_validate({"model": {"path": "some/model"}})
    with pytest.raises(ValueError, match="tiny"):
        ensure_sft_model(cfg)
