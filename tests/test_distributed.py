"""Data-parallel training with 2 CPU processes (gloo), started by torchrun: the update equals one process's on
the same global batch, and after two training iterations every rank holds the same weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import sft_cache_dir

from dist_worker import updated
from test_update import episodes

WORKER = Path(__file__).parent / "dist_worker.py"


def launch(mode: str, out: Path, env: dict) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), mode, str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def child_env(tmp_path_factory) -> dict:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "VINEPPO_CACHE": sft_cache_dir(tmp_path_factory.getbasetemp()),
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_two_processes_take_the_single_process_step(tmp_path, tmp_path_factory):
    launch("update", tmp_path, child_env(tmp_path_factory))
    ranks = [torch.load(tmp_path / f"update_rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = updated(episodes())
    for name, delta in single["deltas"].items():
        assert delta.abs().max() > 0, name
        for rank in ranks:
            assert torch.allclose(rank["deltas"][name], delta, atol=1e-6, rtol=1e-4), name
    for key in ("loss/policy", "loss/kl", "loss/grad_norm", "policy/entropy"):
        for rank in ranks:
            assert rank["stats"][key] == pytest.approx(single["stats"][key], rel=1e-4, abs=1e-7), key


@pytest.mark.slow
def test_after_two_iterations_every_rank_holds_the_same_weights(tmp_path, tmp_path_factory, sft_cache):
    launch("train", tmp_path, child_env(tmp_path_factory))
    zero, one = (torch.load(tmp_path / f"params_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert zero.keys() == one.keys()
    for name in zero:
        assert torch.equal(zero[name], one[name]), name
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # iterations 0, 1, 2, written once (by rank 0)


@pytest.mark.parametrize("name, kind", [("multi_gpu", "MULTI_GPU"), ("multi_cpu", "MULTI_CPU")])
def test_the_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert str(config.distributed_type).endswith(kind) and config.num_machines == 1
