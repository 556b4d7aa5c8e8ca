"""Data-parallel training over several processes, started by `accelerate launch` or `torchrun`.

Every rank holds a full copy of the policy (and reference, and value network). Per iteration each rank samples
and assigns credit for its share of the prompts (the iteration's prompts, dealt out rank by rank), so VinePPO's
MC rollouts, the costly part, are spread over the ranks. In the update each rank accumulates the gradients of its
micro-batches with losses normalised by the *global* mini-batch totals (tokens, responses: summed over the ranks
first), then the gradients are summed over the ranks, so every rank takes the same step as one process holding
the whole mini-batch would. Advantage whitening uses the global mean and variance. Only rank 0 writes the run
directory; logged metrics are averaged over the ranks (token counts summed).

With one process (no launcher) every function here is a no-op, and nothing imports accelerate.

Ending cleanly. A gloo process group runs collectives on worker threads; a worker that drops the last reference
to a finished collective's tensor must take the GIL to free its Python object. If the interpreter is finalizing
by then, CPython ends that thread with `pthread_exit`, whose unwinding through a `noexcept` destructor calls
`std::terminate`: "terminate called without an active exception", SIGABRT, and the launcher reports a failed run
after all the work was done (pytorch/pytorch#190489). `torch.distributed.destroy_process_group` joins the
workers, but only once nothing else holds the group, and two of vineppo's dependencies do: FSDP2's device mesh
(which DTensor's caches keep for the life of the process) and DeepSpeed (its table of groups, its engines' hooks,
and a default argument of `deepspeed.comm`'s barrier bound to the world group when DeepSpeed is imported after the
group exists). `init` and `shutdown` release both, so every command ends with the workers joined (tests check it).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.distributed as dist


def env_flag(env: Mapping[str, str], key: str, default: bool = False) -> bool:
    """A boolean the launcher set in the environment ("true", "1", "yes" in any case)."""
    return env.get(key, str(default)).strip().lower() in {"true", "1", "yes"}


def launched() -> bool:
    """True when started by a launcher with more than one process (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(cpu: bool) -> None:
    """Join the launcher's process group (gloo on CPU, nccl on GPUs) through accelerate; a no-op alone."""
    quiet_deepspeed()
    if launched() and not dist.is_initialized():
        import_deepspeed()
        from accelerate import PartialState

        PartialState(cpu=cpu)


def quiet_deepspeed() -> None:
    """DeepSpeed, where installed, is imported whether or not a DeepSpeed config is in use: by accelerate for every
    model it saves, and by `import_deepspeed` in multi-process runs. On a machine without an accelerator its
    detection then prints "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
    detect it." on stdout, in the middle of a command's output. Naming the accelerator it would pick anyway
    (DS_ACCELERATOR=cpu, DeepSpeed's own override) skips the detection and the line; a value already set is
    kept, and machines with an accelerator are left to DeepSpeed's detection."""
    if not torch.accelerator.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def import_deepspeed() -> None:
    """Import DeepSpeed, where installed, before the process group is created (see the module doc). accelerate
    imports it for every model it saves, so this matters to runs that do not use DeepSpeed too."""
    if importlib.util.find_spec("deepspeed") is not None:
        import deepspeed.comm  # noqa: F401


_MESH = None  # the device mesh FSDP2 shards over, made once (see device_mesh)


def device_mesh(device_type: str):
    """The one-dimensional mesh over every rank that FSDP2 shards over, made once, so that `shutdown` can
    release the process group it holds."""
    global _MESH
    if _MESH is None:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH = init_device_mesh(device_type, (dist.get_world_size(),))
    return _MESH


_RELEASES: list[Callable[[], None]] = []  # what `shutdown` runs while the group still exists


def release_at_shutdown(release: Callable[[], None]) -> None:
    """Have `shutdown` call `release` before it leaves the group, e.g. to remove the hooks by which DeepSpeed
    keeps an engine, and the engine's groups, alive. `release` should hold what it releases weakly."""
    _RELEASES.append(release)


def shutdown() -> None:
    """Leave and free the process group at the end of a command, on every rank, so that its worker threads are
    joined while the interpreter is alive (see the module doc). DeepSpeed's own teardown when DeepSpeed joined:
    it also drops DeepSpeed's references to the groups."""
    global _MESH
    if not (dist.is_available() and dist.is_initialized()):
        return
    while _RELEASES:
        _RELEASES.pop()()
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
    if _MESH is not None:
        # DTensor's sharding caches keep every mesh they have seen; a mesh holds its groups in this table,
        # which is all that is left of the group once it is destroyed.
        _MESH._pg_registry.clear()
        _MESH = None
    gc.collect()  # the sharded models' reference cycles hold the group too
    left = gloo_threads()
    if left:
        warnings.warn(
            f"{len(left)} gloo worker threads outlive the process group (something still holds it); "
            "the process may abort at exit", RuntimeWarning, stacklevel=2,
        )


GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")  # the names gloo gives its worker and transport threads


def gloo_threads() -> list[str]:
    """The names of this process's live gloo threads (Linux; elsewhere an empty list)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name in GLOO_THREADS:
            names.append(name)
    return names


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """On GPUs each rank uses the GPU of its local rank."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `tensor` over the ranks (a new tensor; the input is left alone)."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def max_over_ranks(value: int) -> int:
    if not active():
        return value
    largest = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())


def sum_dicts(values: dict[str, float]) -> dict[str, float]:
    """Key by key sums of the ranks' dicts (a key missing on a rank counts as 0 there)."""
    if not active():
        return values
    gathered: list[dict[str, float]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, values)
    return {key: sum(d.get(key, 0.0) for d in gathered) for key in sorted(set().union(*gathered))}


def sum_gradients(model: torch.nn.Module) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one flat buffer (a rank that computed none
    contributes zeros)."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The ranks' metrics averaged key by key (counts of tokens summed); every rank gets the result."""
    if not active():
        return metrics
    gathered: list[dict[str, float]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, metrics)
    out = {}
    for key in metrics:
        values = [m[key] for m in gathered if key in m]
        out[key] = sum(values) if key.startswith("tokens/") else sum(values) / len(values)
    return out


def from_main(value):
    """Rank 0's `value` on every rank (e.g. a default run directory named after the time)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. to fill a cache); the others run it after it has finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
