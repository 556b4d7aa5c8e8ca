"""A run killed with SIGKILL, mid-iteration or mid-checkpoint, resumes to exactly the metrics of a run that was
never interrupted."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import TINY, sft_cache_dir

from vineppo.cli import main
from vineppo.runlog import read_metrics

ITERATIONS = ["train.iterations=5", "train.checkpoint_every=1"]

# Runs the CLI in a child process; with a checkpoint iteration given, the child announces (by creating FLAG) that
# it is in the middle of writing that checkpoint (its trainer_state.pt written, the directory not yet renamed)
# and then hangs there until killed.
CHILD = """
import sys, time
from pathlib import Path
import torch
import vineppo.checkpoint as checkpoint
hang_in, flag = sys.argv[1], Path(sys.argv[2])
if hang_in:
    save = torch.save
    def save_then_hang(obj, path, *args, **kwargs):
        save(obj, path, *args, **kwargs)
        if Path(path).parent.name.startswith(f".{hang_in}.tmp-"):
            flag.touch()
            time.sleep(600)
    checkpoint.torch.save = save_then_hang
from vineppo.cli import main
sys.exit(main(sys.argv[3:]))
"""


def timing_free(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def assert_same_metrics(run, reference):
    resumed = timing_free(read_metrics(run))
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in reference]
    for got, expected in zip(resumed, reference):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), got["iteration"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINEPPO_CACHE", sft_cache_dir(base))
        run = base / "uninterrupted"
        assert main(["train", "--run-dir", str(run), *TINY, *ITERATIONS]) == 0
    return timing_free(read_metrics(run))


def start_child(run, hang_in, flag, env):
    args = ["train", "--run-dir", str(run), *TINY, *ITERATIONS]
    return subprocess.Popen([sys.executable, "-c", CHILD, hang_in, str(flag), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, child, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, "the child run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the child run"
        time.sleep(0.02)


def child_env(tmp_path_factory):
    return {**os.environ, "VINEPPO_CACHE": sft_cache_dir(tmp_path_factory.getbasetemp()), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_in_the_middle_of_an_iteration(tmp_path, tmp_path_factory, reference, monkeypatch):
    run, env = tmp_path / "run", child_env(tmp_path_factory)
    child = start_child(run, "", tmp_path / "unused", env)
    latest = run / "checkpoints" / "latest"
    wait_for(lambda: latest.is_file() and latest.read_text().strip() == "iter_000002", child)
    time.sleep(0.1)  # into iteration 3
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(read_metrics(run)) < 6, "the child finished before the kill"

    monkeypatch.setenv("VINEPPO_CACHE", env["VINEPPO_CACHE"])
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_metrics(run, reference)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint(tmp_path, tmp_path_factory, reference, monkeypatch):
    run, env, flag = tmp_path / "run", child_env(tmp_path_factory), tmp_path / "writing"
    child = start_child(run, "iter_000003", flag, env)
    wait_for(flag.exists, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "iter_000002"  # the last good one
    assert list(checkpoints.glob(".iter_000003.tmp-*")), "the half-written checkpoint should be left behind"

    monkeypatch.setenv("VINEPPO_CACHE", env["VINEPPO_CACHE"])
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_metrics(run, reference)
    assert not list(checkpoints.glob(".iter_*.tmp-*"))  # cleaned up by the next save
    assert (checkpoints / "latest").read_text().strip() == "iter_000005"
