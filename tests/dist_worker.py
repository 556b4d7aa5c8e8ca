"""Run under a launcher with 2 processes by tests/test_distributed.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py MODE OUT_DIR

MODE "update": one PPO update over a fixed global batch, split over the ranks; each rank saves its parameter
change. MODE "train": two training iterations; each rank saves its final parameters.
"""

import copy
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))

from test_update import episodes  # noqa: E402
from tiny import TINY  # noqa: E402

from vineppo import distributed  # noqa: E402
from vineppo.config import AlgoConfig, TrainConfig, load_config  # noqa: E402
from vineppo.trainer import Trainer  # noqa: E402
from vineppo.update import ppo_update, prepare  # noqa: E402


def updated(mine: list) -> dict:
    """The parameter change and statistics of one PPO update (2 epochs of one mini-batch of the 8 episodes of
    test_update.episodes) from `mine`, this process's share of them."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64))
    train = TrainConfig(prompts_per_iteration=4, samples_per_prompt=2, mini_batch_size=8, micro_batch_size=2,
                        epochs=2, max_grad_norm=1.0)
    algo = AlgoConfig(kl_coef=0.1)
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():  # move the policy off the reference so the KL term has a gradient too
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = copy.deepcopy(policy)
    batches, _ = prepare(policy, reference, mine, pad_id=0, micro_batch_size=train.micro_batch_size,
                         temperature=0.7, whiten_advantages=True, device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    stats = ppo_update(policy, optimizer, scheduler, batches, algo, train, 0.7, torch.Generator().manual_seed(0))
    deltas = {name: p.detach() - q.detach() for (name, p), q in zip(policy.named_parameters(), before.parameters())}
    return {"deltas": deltas, "stats": stats}


def update(out: Path) -> None:
    distributed.init(cpu=True)
    rank, world = distributed.rank(), distributed.world_size()
    torch.save(updated(episodes()[rank::world]), out / f"update_rank{rank}.pt")


def train(out: Path) -> None:
    cfg = load_config(None, [*TINY, "train.iterations=2", "train.prompts_per_iteration=4", "train.mini_batch_size=4",
                             "train.micro_batch_size=2"])
    trainer = Trainer(cfg, out / "run")
    trainer.train()
    params = {name: p.detach() for name, p in trainer.policy.named_parameters()}
    torch.save(params, out / f"params_rank{distributed.rank()}.pt")


if __name__ == "__main__":
    {"update": update, "train": train}[sys.argv[1]](Path(sys.argv[2]))
