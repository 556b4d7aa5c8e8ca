"""`vineppo sft`: the supervised stage the paper starts RL from, for any Hugging Face causal LM.

The model learns the task's gold solutions (`task.sft_problems()`) in the prompt format the RL run will use, with
the loss on the response and eos tokens only (vineppo.sft.examples), under the official recipe (config `sft`).
The loop is transformers' Trainer, so `accelerate launch -m vineppo.cli sft ...` trains data-parallel, with FSDP or
with DeepSpeed as for any Trainer; vineppo adds the data, the official loss reduction, LoRA through peft, and the
run directory:

    RUN_DIR/config.yaml                    the resolved config (`vineppo sft --resume RUN_DIR` reads it)
    RUN_DIR/metrics.jsonl, tensorboard/    loss, learning rate and gradient norm per optimizer step
    RUN_DIR/curves.png                     the loss curve
    RUN_DIR/checkpoints/checkpoint-N/      Trainer checkpoints (the last two); --resume continues from the last
                                           complete one
    RUN_DIR/model/                         the final model and tokenizer: `vineppo train model.path=RUN_DIR/model`
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
)
from transformers import Trainer as HFTrainer

from vineppo.parallel import distributed
from vineppo.config import Config, ConfigError, LoRAConfig
from vineppo.losses import MiniBatchTotals, masked_sum, token_weights
from vineppo.model_sources import resolve_model_source
from vineppo.models import (
    chat_template_of,
    enable_activation_checkpointing,
    load_model,
    load_tokenizer,
    resolve_device,
)
from vineppo.progress import Bars
from vineppo.runlog import Curves, RunLog
from vineppo.sft.examples import IGNORE, Example, collate, encode_examples
from vineppo.tasks import build_task

MODEL_DIR = "model"
STATS_FILE = "sft.json"
LOSS_CURVE = Curves((("sft/loss", "training loss (response tokens)", "-"),), "optimizer step", "loss", None)
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


class ResponseLoss:
    """Next-token loss of the response tokens of one micro-batch, scaled so that the micro-batches of an optimizer
    step (over all processes) add up to the step's loss; Trainer's `compute_loss_func`.

    "sequence_mean" (official): each sequence's mean token loss, summed and divided by the sequences per optimizer
    step (`sft.batch_size`). "token_mean": token losses summed and divided by the step's response tokens, which
    Trainer counts over all micro-batches and processes (`num_items_in_batch`). Trainer multiplies the result by
    the number of processes, which the data-parallel gradient average divides out again.
    """

    def __init__(self, reduction: str, sequences_per_step: int):
        self.reduction, self.sequences_per_step = reduction, sequences_per_step

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:]
        token_losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(targets.shape)
        mask = (targets != IGNORE).to(token_losses.dtype)
        # the RL losses' aggregation: a micro-batch's share of the step's token or sequence mean
        totals = MiniBatchTotals(tokens=num_items_in_batch, sequences=self.sequences_per_step)
        return masked_sum(token_losses, token_weights(mask, self.reduction, totals))


class _LogSteps(TrainerCallback):
    """Each optimizer step's loss, learning rate and gradient norm into the run log, and the progress bar."""

    def __init__(self, runlog: RunLog, bars: Bars):
        self.runlog, self.bars, self.advance = runlog, bars, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.advance = self.bars.overall("SFT", state.max_steps, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.advance()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.runlog.log(state.global_step, {
                "sft/loss": logs["loss"],
                "sft/lr": logs.get("learning_rate", math.nan),
                "sft/grad_norm": logs.get("grad_norm", math.nan),
                "sft/epoch": logs.get("epoch", math.nan),
            })


def with_lora(model: PreTrainedModel, lora: LoRAConfig):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("sft.lora.r > 0 needs peft: pip install 'vineppo[lora]'") from None
    modules = lora.target_modules if lora.target_modules == "all-linear" else lora.target_modules.split(",")
    adapters = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, adapters)


def training_examples(cfg: Config, tokenizer) -> tuple[list[Example], int]:
    """The SFT examples of the task (the first `sft.max_examples`) within `sft.max_length`, and how many were
    longer and left out."""
    task = build_task(cfg.task, chat_template_of(tokenizer))
    problems = task.sft_problems()[: cfg.sft.max_examples]
    examples = encode_examples(tokenizer, problems)
    kept = [e for e in examples if len(e.ids) <= cfg.sft.max_length]
    if not kept:
        raise ConfigError(
            f"sft.max_length: all {len(examples)} solutions are longer than {cfg.sft.max_length} tokens"
        )
    return kept, len(examples) - len(kept)


def _accumulation_steps(cfg: Config, processes: int) -> int:
    per_pass = cfg.sft.micro_batch_size * processes
    if cfg.sft.batch_size % per_pass:
        raise ConfigError(
            f"sft.batch_size ({cfg.sft.batch_size}) must be divisible by the number of processes ({processes}) x "
            f"sft.micro_batch_size ({cfg.sft.micro_batch_size})"
        )
    return cfg.sft.batch_size // per_pass


def run_sft(cfg: Config, run_dir: Path, console: Console, resume: bool = False) -> Path:
    """Fine-tune `model.path` on the task's solutions into `run_dir` (see the module docstring); returns the
    directory of the final model. `resume` continues from the run's last Trainer checkpoint."""
    sft = cfg.sft
    source = resolve_model_source(cfg.model.path, cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    examples, too_long = training_examples(cfg, tokenizer)
    device = resolve_device(cfg.model.device)
    accumulation = _accumulation_steps(cfg, distributed.world_size())
    # float32 master weights whatever model.dtype says: AdamW steps of lr 1e-5 vanish in bfloat16 weights;
    # sft.mixed_precision computes in bf16/fp16 (as DeepSpeed bf16 did for the official models)
    model = load_model(source, "float32", device, cfg.model.trust_remote_code)
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.enable_input_require_grads()  # frozen embeddings under LoRA would otherwise cut the gradient
    if sft.lora.r:
        model = with_lora(model, sft.lora)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=sft.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=sft.epochs,
        learning_rate=sft.lr,
        weight_decay=sft.weight_decay,
        warmup_steps=sft.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type=SCHEDULES[sft.schedule],
        max_grad_norm=sft.max_grad_norm,
        bf16=sft.mixed_precision == "bf16",
        fp16=sft.mixed_precision == "fp16",
        logging_steps=1,
        save_strategy="steps",
        save_steps=sft.save_every,
        save_total_limit=2,
        seed=sft.seed,
        data_seed=sft.seed,
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,  # the examples are (ids, prompt length) pairs for our collator
        average_tokens_across_devices=True,  # ResponseLoss relies on it
        ddp_find_unused_parameters=False,  # every trained weight takes part in every forward pass
        report_to="none",
        disable_tqdm=True,
    )
    last = last_complete_checkpoint(Path(args.output_dir)) if resume else None
    runlog = RunLog(run_dir, cfg.logging.tensorboard, keep_through=_step_of(last), curves=LOSS_CURVE)
    with Bars(console, cfg.logging.progress) as bars:
        trainer = HFTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
            processing_class=tokenizer,
            compute_loss_func=ResponseLoss(sft.loss_reduction, sft.batch_size),
            callbacks=[_LogSteps(runlog, bars)],
        )
        trainer.remove_callback(PrinterCallback)  # the run log and the bar report the steps, not print()
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - started
    losses = [r["sft/loss"] for r in runlog.records]
    stats = {
        "examples": len(examples), "too_long": too_long, "steps": result.global_step, "seconds": seconds,
        "first_loss": losses[0] if losses else math.nan, "final_loss": losses[-1] if losses else math.nan,
    }
    final = run_dir / MODEL_DIR
    _save_final(trainer, tokenizer, final, sft.lora.r > 0, stats)
    if distributed.is_main():
        runlog.close()
    return final


def last_complete_checkpoint(directory: Path) -> str | None:
    """The newest Trainer checkpoint (`checkpoint-N`) that was written to the end: Trainer writes a checkpoint's
    trainer_state.json last, so one without it is what a killed run left half-written, and is passed over."""
    complete = [c for c in directory.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda c: _step_of(str(c)))) if complete else None


def _step_of(checkpoint: str | None) -> int:
    """The optimizer step a Trainer checkpoint (`checkpoint-N`) was written at; -1 for none."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else -1


def _save_final(trainer: HFTrainer, tokenizer, final: Path, lora: bool, stats: dict) -> None:
    """The trained model as a plain HF checkpoint with `stats` in sft.json, written beside `final` and renamed
    into place: LoRA adapters are merged into the weights first, so that `vineppo train` loads it like any model."""
    tmp = final.with_name(f"{final.name}.tmp")
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        if distributed.is_main():
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    else:
        trainer.save_model(str(tmp))  # gathers sharded weights; writes on the main process, with the tokenizer
    if distributed.is_main():
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; RUN_DIR/config.yaml says how it was trained
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
