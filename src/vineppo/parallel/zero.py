"""Sharded data parallelism with DeepSpeed ZeRO (stages 1-3): the `Zero` backend of vineppo.parallel.backend, the
alternative to FSDP2 (vineppo.parallel.fsdp).

Launched with an accelerate DeepSpeed config (`configs/accelerate/deepspeed_zero2.yaml`, `deepspeed_zero3.yaml`),
each trained model (the policy, PPO's value network) gets a DeepSpeed engine around it and the AdamW that
vineppo built: stage 1 shards the AdamW moments over the ranks, stage 2 the gradients too, stage 3 the weights
too. The data-parallel scheme is `vineppo.parallel.distributed`'s, as with FSDP:

- The models stay the trainer's Hugging Face modules; the engine is looked up with `engine_of`. Training forwards
  and backwards go through the engine (stage 3 needs its forward), vineppo.parallel.stepping calls its `backward` and
  `step`. The optimizer step is the caller's boundary (`managed_gradient_accumulation: false`): the micro-batches
  of a mini-batch are backpropagated, then one `step()` reduces, clips to `train.max_grad_norm` and steps.
- Stages 2 and 3 reduce gradients in each backward, so every rank runs as many backwards per step (a rank short of
  micro-batches runs zero-loss ones), and DeepSpeed averages over the ranks where vineppo's losses, normalised by
  global totals, need the sum: losses are multiplied by the number of ranks.
- Under stage 3, generation, MC rollouts and no-grad log-prob passes (unequal numbers of forwards on the ranks)
  run inside `gathered`: the full weights once, with the engine's per-module gathering hooks removed.
- Checkpoints hold full weights and an AdamW state gathered parameter by parameter, in the format of an unsharded
  run (resume with or without DeepSpeed, on any number of ranks); DeepSpeed's own checkpoint directories are not
  used.

The learning-rate schedule stays vineppo's (stepped by `vineppo.update`). Keys of the accelerate config that
this cannot honour (offload, mixed precision, DeepSpeed's own optimizer or scheduler, batch sizes that contradict
`train.*`) are refused by name. Needs DeepSpeed >= 0.19 (the caller-owned step boundary).
"""

from __future__ import annotations

import json
import os
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping

import torch

from vineppo.config import ConfigError, TrainConfig
from vineppo.parallel import distributed

INSTALL = 'DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed>=0.19,<0.20"'


@dataclass(frozen=True)
class ZeroSettings:
    stage: int  # 1: AdamW moments sharded; 2: and gradients; 3: and weights
    zero_optimization: dict = field(default_factory=dict)  # further keys of DeepSpeed's zero_optimization section


# keys of a DeepSpeed config file that vineppo sets itself from train.* ("auto" or absent is accepted)
_SET_BY_VINEPPO = {
    "train_batch_size": "train.mini_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.mini_batch_size / (processes x train.micro_batch_size)",
    "gradient_clipping": "train.max_grad_norm",
}


def settings_from_env(env: Mapping[str, str] = os.environ) -> ZeroSettings:
    """The ZeRO settings of the accelerate DeepSpeed config this process was launched with
    (ACCELERATE_DEEPSPEED_*, or the DeepSpeed JSON file it names). A ConfigError names the key that cannot be
    honoured."""
    if env.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        raise ConfigError(
            f"accelerate config: mixed_precision is {env['ACCELERATE_MIXED_PRECISION']!r}; it must be 'no' "
            "(the dtype comes from model.dtype)"
        )
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        return _settings_from_file(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]))
    for key in ("OFFLOAD_OPTIMIZER_DEVICE", "OFFLOAD_PARAM_DEVICE"):
        value = env.get(f"ACCELERATE_DEEPSPEED_{key}", "none")
        if value != "none":
            raise ConfigError(
                f"accelerate config: deepspeed_config.{key.lower()} is {value!r}; it must be none "
                "(offloading is not supported)"
            )
    if distributed.env_flag(env, "ACCELERATE_DEEPSPEED_ZERO3_INIT"):
        raise ConfigError(
            "accelerate config: deepspeed_config.zero3_init_flag is true; it must be false (vineppo loads the "
            "models whole and deepspeed.initialize partitions them)"
        )
    accumulation = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    if accumulation not in {"1", "auto"}:
        raise ConfigError(
            f"accelerate config: deepspeed_config.gradient_accumulation_steps is {accumulation!r}; it must be 1 "
            f"(vineppo accumulates {_SET_BY_VINEPPO['gradient_accumulation_steps']} micro-batches itself)"
        )
    if env.get("ACCELERATE_GRADIENT_CLIPPING", "none") not in {"none", "auto"}:
        raise ConfigError(
            f"accelerate config: deepspeed_config.gradient_clipping is {env['ACCELERATE_GRADIENT_CLIPPING']!r}; "
            "leave it out and set train.max_grad_norm"
        )
    return ZeroSettings(stage=_stage(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"), "deepspeed_config.zero_stage"))


def _stage(value, where: str) -> int:
    if str(value) not in {"1", "2", "3"}:
        raise ConfigError(
            f"accelerate config: {where} is {value!r}; it must be 1, 2 or 3 (for plain data parallelism use "
            "configs/accelerate/multi_gpu.yaml)"
        )
    return int(value)


def _settings_from_file(path: Path) -> ZeroSettings:
    where = f"deepspeed_config_file {path}"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"accelerate config: {where} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"accelerate config: {where}: line {exc.lineno}: not JSON ({exc.msg})") from None
    for key, source in _SET_BY_VINEPPO.items():
        if config.get(key, "auto") != "auto":
            raise ConfigError(f"{where}: {key} is {config[key]!r}; set it to \"auto\" (vineppo uses {source})")
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ConfigError(f"{where}: remove {key!r} (vineppo's AdamW and warmup-decay schedule are used)")
    for key in ("fp16", "bf16"):
        if config.get(key, {}).get("enabled", False) not in {False, "auto"}:
            raise ConfigError(f"{where}: {key}.enabled must be false or \"auto\" (the dtype comes from model.dtype)")
    zero = dict(config.get("zero_optimization", {}))
    for key in ("offload_optimizer", "offload_param"):
        if zero.get(key, {}).get("device", "none") != "none":
            raise ConfigError(f"{where}: zero_optimization.{key}.device must be none (offloading is not supported)")
    stage = _stage(zero.pop("stage", None), f"{where}: zero_optimization.stage")
    return ZeroSettings(stage=stage, zero_optimization=zero)


# The model holds its engine in its instance dict, beside nn.Module's attribute handling (which would make the
# engine, itself a Module, a submodule of the model it wraps). A table keyed by the model would keep both alive
# for the life of the process, and the process groups the engine holds with them (see vineppo.parallel.distributed).
_ENGINE = "_vineppo_deepspeed_engine"


def engine_of(model):
    """The DeepSpeed engine around `model`, or None for a model that `initialize` was not given."""
    return model.__dict__.get(_ENGINE) if model is not None else None


def initialize(model, optimizer: torch.optim.Optimizer, settings: ZeroSettings, train: TrainConfig, per_step: int):
    """Wrap `model` and its `optimizer` in a DeepSpeed engine (partitions the weights in place under stage 3).
    `per_step` is the number of micro-batches of this rank in one optimizer step. The optimizer's parameter
    groups keep their dicts, so a learning-rate scheduler built on `optimizer` still drives them."""
    try:
        import deepspeed
        from deepspeed.runtime.engine import DeepSpeedEngine
    except ImportError:
        raise ConfigError(f"the accelerate config asks for DeepSpeed, which vineppo does not install: {INSTALL}") from None
    if not hasattr(DeepSpeedEngine, "managed_gradient_accumulation"):
        raise ConfigError(f"DeepSpeed {deepspeed.__version__} is too old (vineppo needs >= 0.19): {INSTALL}")
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": per_step,
        "train_batch_size": train.micro_batch_size * per_step * distributed.world_size(),
        "gradient_clipping": train.max_grad_norm,
        "managed_gradient_accumulation": False,  # vineppo.parallel.stepping calls step() once per mini-batch
        "zero_optimization": {**settings.zero_optimization, "stage": settings.stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,  # vineppo logs its own metrics
    }
    if next(model.parameters()).device.type == "cpu":
        # DeepSpeed compiles and maps a shared-memory all-reduce kernel on CPUs that only DeepSpeed-Inference uses
        # (ZeRO does not); the one switch is its cached table of buildable ops (deepspeed/ops/__init__.py). (The
        # aborts at exit once blamed on this kernel came from process groups outliving the run: vineppo.parallel.distributed.)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    model.__dict__[_ENGINE] = engine
    distributed.release_at_shutdown(partial(_release, weakref.ref(engine)))
    return engine


def _release(engine_ref: weakref.ref) -> None:
    """DeepSpeed's teardown of an engine that still lives: `destroy` removes the gradient hooks that keep the
    engine, its model and its process groups alive. Under ZeRO-3, DeepSpeed 0.19 keeps them by two more
    references that `destroy` leaves: the model stays on its global forward-module stack, where the engine put it,
    and the parameter coordinator's `__params_to_release` is cached with `functools.lru_cache` on the method,
    keyed by the coordinator, a cache that is never cleared. Both are dropped here."""
    engine = engine_ref()
    if engine is None:
        return
    engine.destroy()
    if engine.zero_optimization_stage() == 3:
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

        stack = parameter_offload.FWD_MODULE_STACK
        stack[:] = [module for module in stack if module is not engine.module]
        traced = PartitionedParameterCoordinator._PartitionedParameterCoordinator__params_to_release
        for cell in traced.__closure__ or ():  # DeepSpeed's NVTX wrapper holds the cached function
            if hasattr(cell.cell_contents, "cache_clear"):
                cell.cell_contents.cache_clear()


@contextmanager
def gathered(*models):
    """Full weights of `models` (None ones are left alone) for the block, with no communication inside it (stage
    3; other stages hold them anyway). Entering and leaving are collectives."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(_gathered(model))
        yield


@contextmanager
def _gathered(model):
    engine = engine_of(model)
    if engine is None or engine.zero_optimization_stage() != 3:
        yield
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    # DeepSpeed's helper gathers the weights and removes the per-module hooks, but not the model's
    # start-of-forward hook, which broadcasts across the ranks until a training step has recorded the module
    # order: ranks running different numbers of forwards would wait on each other forever. Removed here too.
    offload = engine.optimizer.parameter_offload
    with unwrap_model_for_generation(engine):
        start_of_forward = offload.module._forward_pre_hooks[offload.fwd_pre_hook.id]
        offload.fwd_pre_hook.remove()
        try:
            yield
        finally:
            offload.fwd_pre_hook = offload.module.register_forward_pre_hook(start_of_forward)


def full_weights(model) -> dict[str, torch.Tensor] | None:
    """A stage-3 model's full state dict on rank 0's CPU (empty on the others; a collective); None where the
    model holds its full weights (it saves itself)."""
    engine = engine_of(model)
    if engine is None or engine.zero_optimization_stage() != 3:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if not distributed.is_main():
            return {}
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


_MOMENTS = ("exp_avg", "exp_avg_sq")


def optimizer_state(model, optimizer: torch.optim.Optimizer) -> dict:
    """The state of the AdamW given to `initialize` in `AdamW.state_dict()`'s format, keyed by parameter position,
    gathered parameter by parameter (a collective; ranks other than 0 get {}). Inside the engine the AdamW's
    parameters are flat fp32 partitions of the weights, so its own state_dict would depend on the sharding."""
    from deepspeed.utils import safe_get_full_optimizer_state

    params = [p for p in model.parameters() if p.requires_grad]
    steps = [s["step"] for s in optimizer.state.values() if "step" in s]
    state = {}
    if steps:
        for i, p in enumerate(params):
            moments = {key: safe_get_full_optimizer_state(p, key).detach().cpu().clone() for key in _MOMENTS}
            state[i] = {"step": steps[0].detach().cpu().clone(), **moments}
    if not distributed.is_main():
        return {}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": list(range(len(params)))}
              for g in optimizer.param_groups]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state of `optimizer_state`'s (= an unsharded AdamW's) format into the AdamW given to `initialize`."""
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
    if not state["state"]:
        return
    step = next(iter(state["state"].values()))["step"]
    zero_optimizer = engine_of(model).optimizer  # its fp32 partitions are the AdamW's parameters
    partitions = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None) or zero_optimizer.single_partition_of_fp32_groups
    for flat in partitions:  # AdamW creates its state at the first step: create it here to fill it
        optimizer.state[flat] = {"step": step.clone().to(flat.device), **{k: torch.zeros_like(flat) for k in _MOMENTS}}
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        for key in _MOMENTS:
            _set_full_optimizer_state(p, state["state"][i][key].to(p.device), key)


def _set_full_optimizer_state(param, value: torch.Tensor, key: str) -> None:
    """`deepspeed.utils.safe_set_full_optimizer_state`, which under ZeRO-3 (DeepSpeed 0.19) fails for a weight
    whose size does not divide by the number of ranks (the last rank's partition is padded; it narrows past the
    end of `value`): the rank's slice is copied here, without the padding."""
    from deepspeed.utils import safe_set_full_optimizer_state

    if not hasattr(param, "ds_id"):  # stages 1 and 2 address the state by fragments, which need no padding
        safe_set_full_optimizer_state(param, value, key)
        return
    stage3 = param._z3_optimizer
    partition, _ = stage3._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    start = partition.numel() * stage3._get_param_partition_rank(param)
    mine = value.flatten()[start : start + partition.numel()]
    partition.data[: mine.numel()].copy_(mine)
