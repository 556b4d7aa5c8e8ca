"""Sharded data parallelism with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

The `FSDP` backend of vineppo.parallel.backend. Launched with an accelerate FSDP config (`configs/accelerate/fsdp_zero2.yaml`, `fsdp_zero3.yaml`), the policy and
the PPO value network are sharded over the ranks: parameters, gradients and AdamW moments each live 1/N on every
rank. Everything else is the data-parallel scheme of `vineppo.parallel.distributed`, with three differences:

- Generation, MC rollouts and the no-grad log-prob passes run a different number of forward passes on each rank,
  which a sharded forward (an all-gather per layer) cannot. They run inside `gathered(...)`: every rank gathers
  the full weights once, and the forwards inside need no communication. Between such blocks and the gradient
  steps the weights go back to their shards.
- Gradients are summed over the ranks by FSDP's reduce-scatter in each backward (sum, not FSDP's default mean:
  the losses are already normalised by the global mini-batch totals), so every rank must run the same number of
  backward passes per optimizer step; a rank short of micro-batches (RestEM, DPO+) runs zero-loss ones instead
  (vineppo.parallel.stepping).
- Checkpoints hold full weights and a full optimizer state gathered on rank 0, in the same format as an unsharded
  run's, so a run can resume with or without sharding, on any number of ranks.

The reference model is not sharded: it only runs no-grad forwards, the same on every rank. The accelerate config
is read from the environment that `accelerate launch` sets (ACCELERATE_USE_FSDP, FSDP_*); its keys that this
implementation cannot honour are refused by name rather than ignored. accelerate's own FSDP wrapping is not used:
it needs CUDA, so it could not be tested on CPU processes, and it owns the gradient reduction that
`vineppo.update` does by itself.
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

import torch

from vineppo.config import ConfigError
from vineppo.parallel import distributed


@dataclass(frozen=True)
class FSDPSettings:
    # True: a layer's weights are freed again after its forward and re-gathered for the backward (ZeRO-3);
    # False: kept gathered from the forward to the backward (ZeRO-2: more memory, less communication)
    reshard_after_forward: bool
    layer_classes: tuple[str, ...]  # the module classes sharded one by one; empty: the model's _no_split_modules
    activation_checkpointing: bool


def settings_from_env(env: Mapping[str, str] = os.environ) -> FSDPSettings:
    """The settings of the accelerate FSDP config this process was launched with (ACCELERATE_USE_FSDP, FSDP_*).
    A ConfigError names the accelerate config key that cannot be honoured."""
    refused = {
        "FSDP_VERSION": (env.get("FSDP_VERSION", "1") != "2", "must be 2 (FSDP1 is not supported)"),
        "FSDP_OFFLOAD_PARAMS": (
            distributed.env_flag(env, "FSDP_OFFLOAD_PARAMS"), "must be false (CPU offload is not supported)"
        ),
        "FSDP_AUTO_WRAP_POLICY": (
            env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP") != "TRANSFORMER_BASED_WRAP",
            "must be TRANSFORMER_BASED_WRAP (each transformer block is sharded on its own)",
        ),
        "FSDP_STATE_DICT_TYPE": (
            env.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT") != "FULL_STATE_DICT",
            "must be FULL_STATE_DICT (checkpoints are ordinary Hugging Face model directories)",
        ),
        "ACCELERATE_MIXED_PRECISION": (
            env.get("ACCELERATE_MIXED_PRECISION", "no") != "no",
            "must be 'no' (the dtype comes from model.dtype)",
        ),
    }
    for key, (bad, expected) in refused.items():
        if bad:
            name = key.removeprefix("ACCELERATE_").lower()
            name = name if name == "mixed_precision" else "fsdp_" + name.removeprefix("fsdp_")
            raise ConfigError(f"accelerate config: {name} is {env[key]!r}; it {expected}")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return FSDPSettings(
        reshard_after_forward=distributed.env_flag(env, "FSDP_RESHARD_AFTER_FORWARD", default=True),
        layer_classes=classes,
        activation_checkpointing=distributed.env_flag(env, "FSDP_ACTIVATION_CHECKPOINTING"),
    )


_RESHARDS_AFTER_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sharded model -> its setting


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model, settings: FSDPSettings) -> None:
    """Shard `model` in place over every rank: each transformer block on its own, then the rest (embeddings,
    final norm, head) as the root. Gradients are summed over the ranks, not averaged (see the module doc)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = set(settings.layer_classes or getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(
            f"accelerate config: fsdp_transformer_layer_cls_to_wrap: no module of {type(model).__name__} is of the "
            f"classes {sorted(names) or '(none named)'}; name its transformer block class"
        )
    mesh = distributed.device_mesh(next(model.parameters()).device.type)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    _RESHARDS_AFTER_FORWARD[model] = settings.reshard_after_forward
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum


@contextmanager
def gathered(*models):
    """Full weights on every rank for the block, with no communication inside it (models that are not sharded,
    or None, are left alone). Entering and leaving are collectives: every rank must do both together."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in models if m is not None and is_sharded(m)]
    units = [(u, _RESHARDS_AFTER_FORWARD[m]) for m in sharded for u in m.modules() if isinstance(u, FSDPModule)]
    for unit, _ in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, reshard_after_forward in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. the gradient norm of sharded gradients); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_weights(model) -> dict[str, torch.Tensor] | None:
    """A sharded model's full state dict on rank 0's CPU (empty on the others; a collective), or None for a model
    that holds its full weights (it saves itself)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()`; for a sharded model gathered in full on rank 0 (a collective; the other ranks
    get {}) and keyed by parameter position like an unsharded optimizer's, so checkpoints do not depend on the
    sharding."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # ranks other than 0
        return {}
    names = _parameter_names(model)
    by_position = {i: full["state"][name] for i, name in enumerate(names) if name in full["state"]}
    groups = [{**group, "params": list(range(len(names)))} for group in full["param_groups"]]
    return {"state": by_position, "param_groups": groups}


def load_optimizer_state(model, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state of `optimizer_state`'s format into the optimizer of a sharded or unsharded model."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _parameter_names(model)
    by_name = {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**group, "params": names} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _parameter_names(model) -> list[str]:
    """The names of the parameters the optimizer holds, in its order (one group over `model.parameters()`)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
