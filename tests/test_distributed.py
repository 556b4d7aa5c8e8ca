"""Data-parallel training with 2 CPU processes (gloo), started by torchrun: the update equals one process's on
the same global batch, and after two training iterations every rank holds the same weights."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import cpu_launch_config, launched_train_command, sft_cache_dir

from dist_worker import updated
from test_update import episodes

WORKER = Path(__file__).parent / "dist_worker.py"


FSDP_ENV = {  # what `accelerate launch --config_file configs/accelerate/fsdp_zero3.yaml` sets
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
}
ZERO_ENV = {  # what `accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml` sets
    "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
    "ACCELERATE_MIXED_PRECISION": "no",
}
SHARDED_ENV = {  # name -> the launcher's environment
    "zero3": FSDP_ENV, "zero2": {**FSDP_ENV, "FSDP_RESHARD_AFTER_FORWARD": "false"},
    "ds_zero3": ZERO_ENV, "ds_zero2": {**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "ds_zero1": {**ZERO_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"},
}
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (README's test command installs it)"
)


def worker_command(mode: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), mode,
            str(out)]


def launch(mode: str, out: Path, env: dict) -> None:
    """Run tests/dist_worker.py's `mode` on 2 processes; each must end with exit 0 and no gloo thread left."""
    result = subprocess.run(worker_command(mode, out), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def child_env(tmp_path_factory) -> dict:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "VINEPPO_CACHE": sft_cache_dir(tmp_path_factory.getbasetemp()),
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
@pytest.mark.parametrize(
    "sharded", [None, "zero3", "zero2", *(pytest.param(f"ds_zero{stage}", marks=needs_deepspeed) for stage in (3, 2, 1))],
)
def test_two_processes_take_the_single_process_step(sharded, tmp_path, tmp_path_factory):
    env = {**child_env(tmp_path_factory), **SHARDED_ENV.get(sharded, {})}
    launch("update", tmp_path, env)
    ranks = [torch.load(path, weights_only=True) for path in sorted(tmp_path.glob("update_rank*.pt"))]
    sharded_weights = sharded in {"zero3", "zero2", "ds_zero3"}  # rank 0 gathers them; DeepSpeed's ZeRO-1/2 keep them
    assert len(ranks) == (1 if sharded_weights else 2)
    single = updated(episodes())
    # changes of ~0.02; a sum of per-rank gradients rounds differently from the single process's, and AdamW
    # magnifies that where a gradient cancels to ~0 (attention's q/k: up to 8e-6 apart under DeepSpeed's ZeRO-3,
    # 1.8e-6 without sharding on some CPUs), so 2e-5 (0.1% of a change) for every mode
    atol = 2e-5
    for name, delta in single["deltas"].items():
        assert delta.abs().max() > 0, name
        for rank in ranks:
            assert torch.allclose(rank["deltas"][name], delta, atol=atol, rtol=1e-4), name
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zero3", pytest.param("ds_zero3", marks=needs_deepspeed)])
def test_a_sharded_rank_short_of_micro_batches_takes_the_same_step(kind, tmp_path, tmp_path_factory):
    """RestEM keeps different numbers of samples on the ranks; a sharded rank out of micro-batches runs zero-loss
    backwards. The update equals the unsharded data-parallel one, which adds zero gradients instead."""
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    plain.mkdir(), sharded.mkdir()
    launch("uneven_update", plain, child_env(tmp_path_factory))
    launch("uneven_update", sharded, {**child_env(tmp_path_factory), **SHARDED_ENV[kind]})
    expected = torch.load(plain / "update_rank0.pt", weights_only=True)
    got = torch.load(sharded / "update_rank0.pt", weights_only=True)
    for name, delta in expected["deltas"].items():  # changes of ~0.04; the sharded run sums the ranks' gradients
        assert delta.abs().max() > 0, name  # micro-batch by micro-batch, AdamW magnifies that rounding where the
        assert torch.allclose(got["deltas"][name], delta, atol=5e-5, rtol=1e-4), name  # gradient is ~0 (<= 1e-5)
    assert got["stats"]["loss/grad_norm"] == pytest.approx(expected["stats"]["loss/grad_norm"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zero3", pytest.param("ds_zero3", marks=needs_deepspeed)])
def test_sharded_training_checkpoints_and_resumes(kind, tmp_path, tmp_path_factory, sft_cache):
    """FSDP2 or DeepSpeed ZeRO-3 over 2 processes, PPO (the value network is sharded too): the checkpoints hold
    the full weights and an optimizer state that loads back exactly."""
    from safetensors.torch import load_file

    launch("train_resume", tmp_path, {**child_env(tmp_path_factory), **SHARDED_ENV[kind]})
    assert (tmp_path / "optimizer_state_matches").read_text() == "True"
    checkpoints = tmp_path / "run" / "checkpoints"
    for done in (2, 3):
        weights = torch.load(tmp_path / f"weights_after_{done}.pt", weights_only=True)
        saved = load_file(checkpoints / f"iter_{done:06d}" / "policy" / "model.safetensors")
        assert saved.keys() <= weights.keys() and len(saved) > 0
        for name, tensor in saved.items():
            assert torch.equal(tensor, weights[name]), name
    assert (checkpoints / "iter_000003" / "value" / "model.safetensors").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # iterations 0-3, written once (by rank 0)


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ds_zero2", "ds_zero3"])
def test_a_non_finite_gradient_stops_deepspeed_before_the_weights_change(kind, tmp_path, tmp_path_factory):
    launch("nonfinite", tmp_path, {**child_env(tmp_path_factory), **SHARDED_ENV[kind]})
    assert (tmp_path / "nonfinite").read_text() == "raised True unchanged True"


SHIPPED_CONFIGS = ["multi_cpu", "fsdp_zero2", "fsdp_zero3",
                   *(pytest.param(f"deepspeed_zero{stage}", marks=needs_deepspeed) for stage in (2, 3))]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_a_run_through_each_shipped_accelerate_config_ends_cleanly(name, tmp_path, tmp_path_factory, sft_cache):
    """`accelerate launch --config_file configs/accelerate/NAME.yaml -m vineppo.cli train` (2 CPU processes): exit 0
    on every rank, and the process group freed before the interpreter exits (vineppo.parallel.distributed.shutdown warns
    when gloo threads outlive it, which can abort a finished run at exit)."""
    command = launched_train_command(cpu_launch_config(name, tmp_path), tmp_path / "run")
    result = subprocess.run(command, env=child_env(tmp_path_factory), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "outlive the process group" not in result.stderr, result.stderr[-3000:]
    assert "after 1 iterations" in result.stderr  # rank 0's summary line
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # iterations 0 and 1


@pytest.mark.parametrize("name, kind", [("multi_gpu", "MULTI_GPU"), ("multi_cpu", "MULTI_GPU")])
def test_the_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert str(config.distributed_type).endswith(kind) and config.num_machines == 1


def test_batch_sizes_that_do_not_split_over_the_processes_stop_before_any_work(tmp_path, monkeypatch, capsys):
    from tiny import TINY

    from vineppo.cli import main
    from vineppo.parallel import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as under a launcher with 2 processes
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "train.micro_batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert "train.mini_batch_size (4) must be divisible by the number of processes (2) x train.micro_batch_size (4)" in err
    assert not (run / "metrics.jsonl").exists()  # nothing was trained or evaluated


@pytest.mark.slow
def test_the_multi_cpu_config_starts_two_processes(tmp_path):
    """accelerate's MULTI_CPU type would start one process here; the shipped config must start two."""
    show = tmp_path / "show.py"
    # one write per process: print() writes its pieces separately, and two processes' pieces interleaved on the
    # shared pipe ("rankrank 1 of 2", seen once in a CI run)
    line = "f\"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}\\n\""
    show.write_text(f"import os\nos.write(1, {line}.encode())\n")
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "multi_cpu.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(show)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("rank")) == ["rank 0 of 2", "rank 1 of 2"]
