"""Do multi-process runs end with exit 0, every time? Every multi-process mode, N runs in a row, on a quiet machine
and with CPU- and disk-heavy work beside them; one JSON line per mode and load.

    python tests/exit_stress.py [--runs 50] [--load quiet heavy] [--modes update:zero3 launch:multi_cpu ...]

Modes: `update:KIND` is tests/dist_worker.py's one PPO update on 2 processes started by torchrun (KIND: dp = plain
data parallel, zero2/zero3 = FSDP2, ds_zero1/2/3 = DeepSpeed ZeRO); `launch:NAME` is `accelerate launch
--config_file configs/accelerate/NAME.yaml -m vineppo.cli train` (made for 2 CPU processes), one tiny iteration;
`sft:NAME` the same for `vineppo.cli sft`: one step of a tiny byte-level Llama on 4 GSM8K solutions (transformers'
Trainer, data parallel). `heavy` runs two CPU-bound processes and one writing and fsync-ing 64 MiB files beside
the runs. A run that does not exit 0 is counted by its return code (-6: SIGABRT, as "terminate called without an
active exception" ends a process) and its last lines of output are kept in the run's log directory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_distributed import SHARDED_ENV, worker_command  # noqa: E402
from tiny import cpu_launch_config, launched_sft_command, launched_train_command, save_byte_llama  # noqa: E402

UPDATE_KINDS = ("dp", "zero2", "zero3", "ds_zero1", "ds_zero2", "ds_zero3")
LAUNCH_CONFIGS = ("multi_cpu", "fsdp_zero2", "fsdp_zero3", "deepspeed_zero2", "deepspeed_zero3")
MODES = [f"update:{kind}" for kind in UPDATE_KINDS] + [f"launch:{name}" for name in LAUNCH_CONFIGS] + ["sft:multi_cpu"]


def spin() -> None:
    while True:
        pass


def write_files(directory: str) -> None:
    block = os.urandom(1 << 20)
    while True:
        path = Path(directory) / "load.bin"
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()


@contextmanager
def heavy_load(directory: str):
    workers = [mp.Process(target=spin, daemon=True) for _ in range(2)]
    workers.append(mp.Process(target=write_files, args=(directory,), daemon=True))
    for w in workers:
        w.start()
    try:
        yield
    finally:
        for w in workers:
            w.kill()
            w.join()


def command(mode: str, scratch: Path) -> tuple[list[str], dict]:
    kind, name = mode.split(":")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VINEPPO_CACHE": str(scratch.parent / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    if kind == "update":
        return worker_command("update", scratch), {**env, **SHARDED_ENV.get(name, {})}
    if kind == "sft":
        return launched_sft_command(cpu_launch_config(name, scratch), scratch / "run", scratch.parent / "byte-llama"), env
    return launched_train_command(cpu_launch_config(name, scratch), scratch / "run"), env


def stress(mode: str, runs: int, load: str, base: Path) -> dict:
    codes: Counter = Counter()
    started = time.perf_counter()
    for i in range(runs):
        scratch = base / f"{mode.replace(':', '-')}-{load}-{i}"
        scratch.mkdir(parents=True)
        cmd, env = command(mode, scratch)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        codes[result.returncode] += 1
        if result.returncode == 0:
            shutil.rmtree(scratch)
        else:
            (scratch / "output.txt").write_text(result.stdout[-5000:] + result.stderr[-20000:])
            print(f"  {mode} {load} run {i}: exit {result.returncode}, output in {scratch}", file=sys.stderr)
    return {"mode": mode, "load": load, "runs": runs, "exit_0": codes.pop(0, 0),
            "failures_by_code": {str(code): n for code, n in sorted(codes.items())},
            "seconds": round(time.perf_counter() - started, 1),
            "loadavg_after": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", nargs="+", choices=["quiet", "heavy"], default=["quiet", "heavy"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--logs", type=Path, default=None,
                        help="where failed runs' output is kept (default: a temp dir)")
    args = parser.parse_args()
    base = args.logs or Path(tempfile.mkdtemp(prefix="exit-stress-"))
    print(f"loadavg before: {open('/proc/loadavg').read().strip()}; logs under {base}", flush=True)
    # the tiny SFT model that launch:* runs start from, trained once
    warm = base / "warmup"
    warm.mkdir(parents=True)
    warm_command, env = command("launch:multi_cpu", warm)
    subprocess.run(warm_command, env=env, check=True, capture_output=True)
    save_byte_llama(base / "byte-llama")  # the model sft:* runs fine-tune
    for load in args.load:
        for mode in args.modes:
            if load == "heavy":
                with heavy_load(str(base)):
                    line = stress(mode, args.runs, load, base)
            else:
                line = stress(mode, args.runs, load, base)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
