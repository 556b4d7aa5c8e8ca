"""`vineppo sft` for any Hugging Face causal LM: the loss reductions, the run directory, LoRA, resuming, and a
checkpoint that `vineppo train` starts from."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny import FIXTURES, GSM8K_FIXTURES, cpu_launch_config, launched_sft_command, save_byte_llama

from vineppo.cli import main
from vineppo.config import Config
from vineppo.models import load_tokenizer
from vineppo.runlog import read_metrics
from vineppo.sft.examples import IGNORE, collate
from vineppo.sft.stage import ResponseLoss, training_examples

GSM8K = GSM8K_FIXTURES


@pytest.fixture(scope="module")
def byte_llama(tmp_path_factory) -> Path:
    return save_byte_llama(tmp_path_factory.mktemp("byte-llama"))


def sft(run_dir: Path, model: Path, *overrides: str, resume: bool = False) -> int:
    where = ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir), f"model.path={model}", *GSM8K]
    return main(["sft", *where, *overrides])


def test_response_loss_matches_the_written_out_reductions():
    # two sequences: 2 and 1 response tokens (the prompt and the padding carry IGNORE); logits over 3 tokens
    logits = torch.tensor([
        [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]],
        [[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0], [5.0, 5.0, 5.0]],
    ])
    labels = torch.tensor([[IGNORE, IGNORE, 0, 1], [IGNORE, IGNORE, 2, IGNORE]])
    # position t predicts labels[t + 1]: sequence 0 is scored at logits[0, 1] -> 0 and logits[0, 2] -> 1,
    # sequence 1 at logits[1, 1] -> 2
    nll_a = -math.log(math.exp(2) / (math.exp(2) + 2))
    nll_b = -math.log(math.e / (math.e + 2))
    nll_c = -math.log(math.exp(3) / (math.exp(3) + 2))
    outputs = SimpleNamespace(logits=logits)
    # official: per-sequence mean, then the mean over the step's 4 sequences (this micro-batch holds 2 of them)
    sequence_mean = ResponseLoss("sequence_mean", sequences_per_step=4)(outputs, labels, num_items_in_batch=10)
    assert sequence_mean.item() == pytest.approx(((nll_a + nll_b) / 2 + nll_c) / 4, abs=1e-6)
    # token mean over the step's 10 response tokens (Trainer's count over all micro-batches)
    token_mean = ResponseLoss("token_mean", sequences_per_step=4)(outputs, labels, num_items_in_batch=10)
    assert token_mean.item() == pytest.approx((nll_a + nll_b + nll_c) / 10, abs=1e-6)


def first_step_loss(model_dir: Path, reduction: str) -> float:
    """The first optimizer step's loss over all 4 training solutions, computed directly from the initial model."""
    from transformers import AutoModelForCausalLM

    cfg = Config.model_validate({"task": {"name": "gsm8k", "gsm8k": {
        "train_source": str(FIXTURES / "gsm8k_train4.jsonl"), "test_source": str(FIXTURES / "gsm8k_test2.jsonl")}}})
    tokenizer = load_tokenizer(model_dir)
    examples, _ = training_examples(cfg, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    per_sequence, tokens = [], []
    with torch.no_grad():
        for example in examples:
            batch = collate([example], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
            targets = batch["labels"][0, 1:]
            nll = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
            count = int((targets != IGNORE).sum())
            per_sequence.append(nll.item() / count)
            tokens.append((nll.item(), count))
    if reduction == "sequence_mean":
        return sum(per_sequence) / len(per_sequence)
    return sum(n for n, _ in tokens) / sum(c for _, c in tokens)


@pytest.mark.parametrize("reduction", ["sequence_mean", "token_mean"])
@pytest.mark.parametrize("micro_batch_size", [pytest.param(4, marks=pytest.mark.slow), 2, pytest.param(1, marks=pytest.mark.slow)])
def test_the_logged_step_loss_is_the_official_reduction_at_any_accumulation(
    byte_llama, tmp_path, reduction, micro_batch_size
):
    """One optimizer step of 4 solutions, in 1, 2 or 4 micro-batches: the step's loss is the same formula."""
    run = tmp_path / "run"
    code = sft(run, byte_llama, "sft.epochs=1", "sft.batch_size=4", f"sft.micro_batch_size={micro_batch_size}",
               f"sft.loss_reduction={reduction}")
    assert code == 0
    (record,) = read_metrics(run)
    assert record["iteration"] == 1
    assert record["sft/loss"] == pytest.approx(first_step_loss(byte_llama, reduction), abs=2e-4)  # logged to 4 d.p.


@pytest.mark.slow
def test_two_processes_take_the_single_process_step(byte_llama, tmp_path):
    """`accelerate launch` (2 CPU processes, 2 solutions each): the step's loss is the formula over all 4."""
    run = tmp_path / "run"
    command = launched_sft_command(cpu_launch_config("multi_cpu", tmp_path), run, byte_llama)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = read_metrics(run)
    assert record["sft/loss"] == pytest.approx(first_step_loss(byte_llama, "sequence_mean"), abs=2e-4)
    assert (run / "model" / "model.safetensors").is_file() and result.stderr.count("run directory:") == 1


@pytest.mark.slow
def test_sft_lowers_the_loss_and_writes_a_model_that_train_starts_from(byte_llama, tmp_path):
    run = tmp_path / "sft"
    code = sft(run, byte_llama, "sft.epochs=10", "sft.lr=2e-2", "sft.batch_size=4", "sft.micro_batch_size=2")
    assert code == 0
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == list(range(1, 11))  # 4 solutions, 1 step an epoch
    assert records[-1]["sft/loss"] < 0.8 * records[0]["sft/loss"]
    assert records[0]["sft/lr"] < records[1]["sft/lr"] and records[-1]["sft/lr"] < records[1]["sft/lr"]
    assert 0 <= json.loads((run / "eval.json").read_text())["eval/accuracy"] <= 1
    for name in ("config.yaml", "curves.png", "model/model.safetensors", "model/tokenizer.json", "model/sft.json"):
        assert (run / name).is_file(), name
    stats = json.loads((run / "model" / "sft.json").read_text())
    assert stats["steps"] == 10 and stats["examples"] == 4 and stats["too_long"] == 0
    assert not list(run.glob("model.tmp*")) and not list((run / "model").glob("*.bin"))  # no pickles

    rl = tmp_path / "rl"
    code = main([
        "train", "--run-dir", str(rl), f"model.path={run / 'model'}", *GSM8K, "algo.name=grpo",
        "train.iterations=1", "train.prompts_per_iteration=2", "train.samples_per_prompt=2",
        "train.mini_batch_size=4", "train.micro_batch_size=2",
    ])
    assert code == 0
    assert (rl / "checkpoints" / "iter_000001" / "policy" / "model.safetensors").is_file()


def test_lora_adapters_are_merged_into_a_plain_checkpoint(byte_llama, tmp_path):
    pytest.importorskip("peft")
    run = tmp_path / "run"
    code = sft(run, byte_llama, "sft.epochs=2", "sft.lr=1e-2", "sft.batch_size=4", "sft.micro_batch_size=4",
               "sft.lora.r=4")
    assert code == 0
    base = load_file(byte_llama / "model.safetensors")
    tuned = load_file(run / "model" / "model.safetensors")
    assert set(tuned) == set(base)  # no adapter weights: the merged model loads like any other
    changed = [name for name in base if not torch.equal(base[name], tuned[name])]
    assert changed and all("proj" in name for name in changed)  # only the adapted linear layers moved
    assert torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])


@pytest.mark.slow
def test_a_stopped_sft_run_resumes_from_its_last_checkpoint(byte_llama, tmp_path):
    run = tmp_path / "run"
    assert sft(run, byte_llama, "sft.epochs=2", "sft.batch_size=4", "sft.micro_batch_size=4", "sft.save_every=1") == 0
    # as if killed after 2 of 3 epochs while writing checkpoint-3: the run goes on from checkpoint-2, the last
    # complete one, for one more step, logging step 3 only
    (run / "checkpoints" / "checkpoint-3").mkdir()
    (run / "checkpoints" / "checkpoint-3" / "model.safetensors").write_bytes(b"cut short")
    assert sft(run, byte_llama, "sft.epochs=3", resume=True) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "model" / "sft.json").read_text())["steps"] == 3


def test_an_interrupted_sft_run_keeps_its_checkpoints_for_resume(byte_llama, tmp_path, monkeypatch):
    from vineppo.sft import stage

    def interrupted(*args, **kwargs):
        (tmp_path / "run" / "checkpoints").mkdir(exist_ok=True)  # what training had written (Trainer writes one)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_save_final", interrupted)
    assert sft(tmp_path / "run", byte_llama, "sft.epochs=1", "sft.batch_size=4", "sft.micro_batch_size=4") == 130
    assert (tmp_path / "run" / "config.yaml").is_file()  # resumable: nothing removed


def test_a_missing_model_stops_with_one_line_and_leaves_no_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(run, tmp_path / "no-such-model") == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not run.exists()


def test_sft_settings_that_cannot_work_stop_with_one_line_naming_the_key(byte_llama, tmp_path, capsys, monkeypatch):
    assert sft(tmp_path / "a", byte_llama, "sft.batch_size=6", "sft.micro_batch_size=4") == 2
    assert "sft: batch_size (6) must be divisible by micro_batch_size (4)" in capsys.readouterr().err
    assert sft(tmp_path / "b", byte_llama, "sft.max_length=20") == 2
    assert "sft.max_length: all 4 solutions are longer than 20 tokens" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    assert sft(tmp_path / "c", byte_llama, "sft.lora.r=4") == 2
    assert "sft.lora.r > 0 needs peft: pip install 'vineppo[lora]'" in capsys.readouterr().err
    assert main(["sft", "--run-dir", str(tmp_path / "d"), "logging.progress=false"]) == 2
    assert "--run-dir: the tiny model's warm start is cached (model.tiny.sft), not a run" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name in "abcd"]
