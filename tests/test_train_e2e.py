"""A few iterations of the whole pipeline at tiny sizes: run directory contents, CLI errors, exact resume."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from vineppo.cli import main
from vineppo.runlog import read_metrics, read_samples

from tiny import TINY

pytestmark = pytest.mark.usefixtures("sft_cache")


@pytest.mark.slow
def test_train_writes_the_run_directory_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=3"]) == 0

    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "curves.png", "checkpoints/latest"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert {"eval/accuracy", "time/eval"} <= records[0].keys()
    for key in ("train/reward", "loss/kl", "loss/clipfrac", "loss/approx_kl", "policy/entropy", "advantage/std",
                "value/mc_mean", "tokens/policy", "tokens/mc", "time/sample", "time/credit", "time/update"):
        assert key in records[1], key
    assert "eval/accuracy" in records[2] and "eval/accuracy" not in records[1]
    assert records[1]["logprob_gap/sampler_vs_trainer"] < 1e-4  # the engine's log-probs are the trainer's
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_000003"
    policy = run / "checkpoints" / "iter_000003" / "policy"
    assert (policy / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(policy)
    AutoTokenizer.from_pretrained(policy)

    samples = read_samples(run)
    assert [s["iteration"] for s in samples] == [1] * 4 + [2] * 4 + [3] * 4  # logging.samples_per_iteration

    # Simulate a crash after iteration 2's checkpoint: drop the last checkpoint, then resume.
    shutil.rmtree(run / "checkpoints" / "iter_000003")
    (run / "checkpoints" / "latest").write_text("iter_000002\n")
    assert main(["train", "--resume", str(run)]) == 0
    resumed = read_metrics(run)
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3]
    timing_free = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert timing_free(resumed[3]) == pytest.approx(timing_free(records[3]), rel=1e-5, abs=1e-6)
    assert read_samples(run) == samples  # iteration 3's samples replaced, not doubled

    # Resuming a finished run does nothing and loses nothing.
    assert main(["train", "--resume", str(run)]) == 0
    assert read_metrics(run) == resumed


def test_bad_config_exits_2_with_one_line(capsys):
    assert main(["train", "algo.vineppo.k=0"]) == 2
    err = capsys.readouterr().err
    assert "algo.vineppo.k" in err and "greater than or equal to 1" in err and "Traceback" not in err


def test_the_tiny_model_on_another_task_is_a_one_line_error_naming_model_path(tmp_path, capsys):
    assert main(["train", "task.name=gsm8k", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "model.path" in error and "task.name=gsm8k" in error and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_by_a_missing_model_leaves_no_run_directory(tmp_path, capsys):
    assert main(["train", "model.path=/nonexistent", "--run-dir", str(tmp_path / "run")]) == 2
    assert "/nonexistent' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # a directory the user made is left alone
    assert main(["train", "model.path=/nonexistent", "--run-dir", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()


def test_unwritable_run_dir_fails_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--run-dir", str(blocker / "run"), *TINY]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_resume_of_a_non_run_directory(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_eval_of_a_missing_model(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "logging.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err


def test_a_new_run_does_not_overwrite_an_old_one(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    assert main(["train", "--run-dir", str(run), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_nan_advantages_stop_the_run_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    import vineppo.credit.vine as vine

    monkeypatch.setattr(vine, "step_advantages", lambda values, reward: [float("nan")] * len(values))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.iterations=2"]) == 1
    err = capsys.readouterr().err
    assert "iteration 1: the advantages contain NaN or inf" in err and "Traceback" not in err
    assert not (run / "checkpoints").exists()


def test_prompt_plus_generation_longer_than_the_context(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "engine.max_new_tokens=125"]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's max_position_embeddings=128 (lower engine.max_new_tokens" in err
    assert "Traceback" not in err


def test_a_disk_too_small_for_the_checkpoints_fails_before_training(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "GiB free" in err and "lower logging.keep_checkpoints" in err and "Traceback" not in err
    assert not (run / "metrics.jsonl").exists()  # nothing trained, nothing logged


@pytest.mark.slow
def test_redirected_output_has_whole_lines_and_no_progress_bars(tmp_path, capsys):
    """Written to a file or a CI log (here: pytest's capture, not a terminal), each iteration is one line, however
    long, and no progress-bar frames are left in the output, though logging.progress is on."""
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "train.iterations=1", "logging.progress=true"]) == 0
    lines = capsys.readouterr().err.splitlines()
    (iteration,) = [line for line in lines if line.startswith("iteration 1/1:")]
    assert len(iteration) > 80 and "(sample" in iteration and "update" in iteration  # not cut at 80 columns
    assert not [line for line in lines if "━" in line or "ETA" in line]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_a_run_without_a_deepspeed_config_prints_nothing_of_deepspeed(tmp_path):
    """accelerate imports DeepSpeed, where installed, to save any model; its accelerator detection must not print
    "Setting accelerator to CPU ..." into the output of a run that does not use it (vineppo.parallel.distributed
    .quiet_deepspeed)."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run(
        [sys.executable, "-m", "vineppo.cli", "train", "--run-dir", str(tmp_path / "run"), *TINY, "train.iterations=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "checkpoints").is_dir()  # a model was saved, so accelerate imported DeepSpeed
    assert "accelerator" not in done.stdout + done.stderr
