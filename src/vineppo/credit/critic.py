"""The PPO baseline's value network (PAPER-NOTES 2.5): credit from its predictions, then its own update.

Per iteration: `assign_credit` (PPO's credit estimator, `critic_credit`) predicts V(s_t) at every response token
(no grad), turns them into token-level GAE advantages and returns (vineppo.credit.gae), and keeps the returns and
old values of every micro-batch. After the policy's PPO update (vineppo.update.train_ppo), `update` runs `train.epochs` passes of the clipped value loss over the same
mini-batches (the same micro-batches, shuffled by a generator seeded like the policy's), with the same
micro-batching, token-mean and gradient clipping as the policy (vineppo.update.minibatch_steps).

The value network is a separate model with its own AdamW and the policy's schedule (PAPER-NOTES 2.5: same LR and
schedule; the loss's `vf_coef` is unused there for that reason). The advantages are whitened like every
estimator's (over the iteration, vineppo.update), and the returns are built from the unwhitened ones.

Departure from the official code: it steps the policy and the value network in one loop over the mini-batches;
here the value network's epochs follow the policy's. Neither update reads the other's new weights (the
advantages and returns are fixed before either starts), so the order changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from vineppo.config import PPOOptions, TrainConfig
from vineppo.credit.gae import gae, outcome_rewards
from vineppo.episodes import Episode, TokenBatch, collate
from vineppo.losses import MiniBatchTotals, clipped_value_loss, masked_mean_var
from vineppo.parallel.backend import Trained
from vineppo.steps import TokenTexts, split_steps
from vineppo.update import micro_batches, minibatch_steps

if TYPE_CHECKING:
    from vineppo.context import Context


@dataclass
class ValueBatch:
    """A micro-batch with the value network's targets, aligned with `tokens`' per-token tensors."""

    tokens: TokenBatch
    old_values: torch.Tensor  # [B, T-1] V(state before the predicted token) when the credit was assigned
    returns: torch.Tensor  # [B, T-1] GAE advantage + old value


def predict_values(model, tokens: TokenBatch) -> torch.Tensor:
    """[B, T-1]: the head's output at position j is the value of the state whose next token is token j + 1."""
    out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits[:, :-1, 0]
    return out.float()


def explained_variance(
    predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> float:
    """1 - Var(targets - predicted) / Var(targets) over the masked entries.

    It is undefined when the targets do not vary (every reward of the iteration equal, with gamma = 1: the
    returns are then equal up to rounding); it is reported as 0 there, as `whiten` does, rather than as
    rounding noise divided by ~0."""
    _, var = masked_mean_var(targets, mask)
    if var <= eps:
        return 0.0
    _, error_var = masked_mean_var(targets - predicted, mask)
    return float(1.0 - error_var / var)


class Critic:
    """The value network with its optimizer and schedule, and the targets of the iteration in progress."""

    def __init__(self, trained: Trained, options: PPOOptions, train: TrainConfig):
        self.trained, self.model = trained, trained.model
        self.options, self.train = options, train
        self.batches: list[ValueBatch] = []

    @torch.no_grad()
    def assign_credit(
        self, episodes: list[Episode], pad_id: int, decode: Callable[[list[int]], str], device: torch.device
    ) -> dict[str, float]:
        """Fill `advantages` (GAE), `step_starts` and `step_values` (the predicted value at each step boundary,
        for comparison with VinePPO's MC values in the `value/*` metrics) of every episode.

        Micro-batches are cut as `vineppo.update.prepare` cuts them, so `update` can shuffle them alike.
        """
        self.model.eval()
        token_texts = TokenTexts(decode)
        self.batches = []
        for group in micro_batches(episodes, self.train.micro_batch_size):
            tokens = collate(group, pad_id).to(device)
            values = predict_values(self.model, tokens)
            returns = torch.zeros_like(values)
            for row, episode in enumerate(group):
                response = tokens.response_mask[row].bool()
                response_values = values[row, response].cpu()
                rewards = outcome_rewards(len(response_values), episode.reward)
                advantages, episode_returns = gae(rewards, response_values, self.options.gamma, self.options.lam)
                returns[row, response] = episode_returns.to(device)
                episode.advantages = advantages.tolist()
                episode.step_starts = split_steps(token_texts(episode.response_ids))
                episode.step_values = response_values[episode.step_starts].tolist()
            self.batches.append(ValueBatch(tokens, values, returns))
        old_values = torch.cat([b.old_values.flatten() for b in self.batches])
        returns = torch.cat([b.returns.flatten() for b in self.batches])
        mask = torch.cat([b.tokens.response_mask.flatten() for b in self.batches])
        return {
            "value/states": sum(len(e.step_starts) for e in episodes),
            "value/explained_variance": explained_variance(old_values, returns, mask),
        }

    def update(self, generator: torch.Generator, on_step=None) -> dict[str, float]:
        """`train.epochs` passes of the clipped value loss over the batches of the last `assign_credit`."""
        clip_range = self.options.value_clip_range

        def micro_loss(trained, b: ValueBatch, totals: MiniBatchTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            values = predict_values(trained, b.tokens)
            loss = clipped_value_loss(
                values, b.old_values, b.returns, b.tokens.response_mask, totals.tokens, clip_range
            )
            return loss, {"loss/value": loss.detach()}

        stats = minibatch_steps(self.trained, self.batches, self.train, generator, micro_loss, on_step)
        self.batches = []
        return {
            "loss/value": stats["loss/value"], "value/grad_norm": stats["grad_norm"], "value/lr": stats["lr"],
            "tokens/value_update": stats["tokens"],
        }

    def state_dict(self) -> dict:
        return {
            "value_optimizer": self.trained.optimizer_state(),
            "value_scheduler": self.trained.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.trained.load_optimizer_state(state["value_optimizer"])
        self.trained.scheduler.load_state_dict(state["value_scheduler"])


def critic_credit(episodes: list[Episode], ctx: Context) -> dict[str, float]:
    """PPO's credit: the value network's GAE advantages (the run's `Critic`, which `update` trains after the
    policy's update)."""
    return ctx.critic.assign_credit(episodes, ctx.pad_id, ctx.decode, ctx.device)
