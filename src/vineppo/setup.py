"""What every command that samples from a model on a task needs, built in one place: the tokenizer and its codec,
the task (with the model's chat template, for `prompt_format: chat`), the model, the engine `engine.name` names,
and the sampling settings of the training rollouts (with the task's stop strings). The trainer, `vineppo eval`
and the value analysis all build it here, so that what one samples is what the others sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vineppo.config import Config
from vineppo.engine import build_engine
from vineppo.engine.base import Engine, SamplingParams
from vineppo.models import TextCodec, chat_template_of, load_model, load_tokenizer
from vineppo.tasks import build_task
from vineppo.tasks.base import Task


@dataclass
class Setup:
    tokenizer: PreTrainedTokenizerBase
    codec: TextCodec
    task: Task
    model: PreTrainedModel | None  # None where vLLM holds the only copy of the weights (evaluation)
    engine: Engine
    rollouts: SamplingParams  # the training rollouts' and MC rollouts' settings (PAPER-NOTES 2.3, 2.6)


def build_setup(
    cfg: Config, model_path: str, device: torch.device, *, trained: bool = False, rank: int | None = None
) -> Setup:
    """Everything above for the model at `model_path` (a local directory). A `trained` model (the trainer's
    policy) is always loaded; otherwise only when the engine samples from it (hf), not beside vLLM. `rank`: the
    process's rank in a multi-process run, None alone."""
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    task = build_task(cfg.task, chat_template_of(tokenizer))
    model = None
    if trained or cfg.engine.name != "vllm":
        model = load_model(model_path, cfg.model.dtype, device, cfg.model.trust_remote_code)
    engine = build_engine(cfg, model, tokenizer, model_path, rank)
    rollouts = SamplingParams(cfg.engine.temperature, cfg.engine.top_p, cfg.engine.max_new_tokens, task.stop_sequences)
    return Setup(tokenizer, TextCodec(tokenizer), task, model, engine, rollouts)
