"""The training loop: sample, assign credit, update; evaluate, log and checkpoint.

One iteration, as in the paper's algorithm box (`Trainer.iteration`):
  1. sample: draw `prompts_per_iteration` training problems (seeded by (seed, iteration), so the data position
     is the iteration number) and `samples_per_prompt` responses each from the current policy, graded;
  2. credit: the method's estimator (its row of vineppo.algorithms.METHODS) fills the per-token advantages
     (VinePPO: K MC rollouts from every step boundary; GRPO / RLOO: the rewards of the other samples of the same
     prompt; PPO: a value network's predictions and GAE; RestEM and DPO+ have none);
  3. update: the method's update rule trains the policy on them (the PPO family: `epochs` passes of clipped
     surrogate + KL-to-reference mini-batch steps, PPO then its value network's; RestEM: fine-tuning on the
     correct samples; DPO+: correct/incorrect pairs).
Greedy test accuracy is measured before the first iteration and every `eval_every` iterations. The trainer knows
no method by name and no parallel backend by kind (vineppo.parallel).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from vineppo.algorithms import METHODS, whitens
from vineppo.checkpoint import (
    check_free_space,
    checkpoint_bytes,
    load_latest,
    save_checkpoint,
    set_rng_state,
)
from vineppo.config import Config, ConfigError, config_to_yaml
from vineppo.context import Context
from vineppo.credit import advantage_metrics
from vineppo.credit.critic import Critic
from vineppo.episodes import Episode, sample_metrics
from vineppo.evaluate import greedy_metrics, greedy_rollouts
from vineppo.model_sources import resolve_model_source
from vineppo.models import (
    enable_activation_checkpointing,
    load_model,
    load_value_model,
    resolve_device,
)
from vineppo.progress import Bars, make_console
from vineppo.report.samples import episode_record
from vineppo.runlog import CONFIG_FILE, RunLog
from vineppo.sft import ensure_sft_model
from vineppo.setup import build_setup
from vineppo.parallel import distributed
from vineppo.parallel.backend import Replicated, Trained, backend_from_launch, micro_batches_per_step
from vineppo.parallel.stepping import NonFiniteError
from vineppo.rollout import sample_episodes


class TrainingError(RuntimeError):
    """A run that cannot go on; the message names the iteration and the quantity."""


def iteration_seed(seed: int, iteration: int) -> int:
    """Every random draw of iteration i comes from generators seeded here, so resuming is exact."""
    return (seed * 1_000_003 + iteration) % (2**63)


def initial_model_path(cfg: Config, console: Console) -> str:
    """The policy's starting point (also the KL reference): the cached SFT tiny model, or model.path
    (a GGUF file or the SmolLM2 alias converted once, vineppo.model_sources)."""
    if cfg.model.path == "tiny":
        return str(ensure_sft_model(cfg, console=console))
    return resolve_model_source(cfg.model.path, cfg.model.trust_remote_code)


def check_sizes(cfg: Config, backend: Replicated) -> None:
    """What a multi-process run cannot split, or combine, as a ConfigError naming the key."""
    world = distributed.world_size()
    if cfg.train.prompts_per_iteration % world:
        raise ConfigError(
            f"train.prompts_per_iteration ({cfg.train.prompts_per_iteration}) must be divisible by the number "
            f"of processes ({world})"
        )
    micro_batches_per_step(cfg.train)
    if cfg.engine.name == "vllm" and not backend.allows_vllm:
        raise ConfigError(
            "engine.name=vllm cannot be combined with an FSDP or DeepSpeed config (vLLM needs the full weights)"
        )


def check_finite(episodes: list[Episode]) -> None:
    """A NonFiniteError on every rank when any rank's advantages hold NaN or inf (a collective)."""
    finite = all(math.isfinite(a) for e in episodes for a in e.advantages)
    if distributed.sum_over_ranks(torch.tensor([0.0 if finite else 1.0])).item() > 0:
        raise NonFiniteError("the advantages contain NaN or inf")


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of a rank in a data-parallel run: rank 0 keeps the iteration's seed (so one process
    samples exactly as before), the others get seeds no iteration of rank 0 uses."""
    return seed if rank == 0 else (seed * 6_364_136_223_846_793_005 + rank) % (2**63)


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup, then linear decay to 0 at the last step (DeepSpeed WarmupDecayLR, as in the paper)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def catch_up(scheduler, step: int) -> None:
    """Advance the schedule to `step` optimizer steps. RestEM and DPO+ train on a varying share of an iteration's
    samples (the correct ones, the pairs), and VinePPO with `skip_agreeing_groups` on the prompts it keeps, so they
    take at most the PPO family's steps per iteration; catching up at the end of each iteration keeps their
    learning rate on the run's schedule in iterations. A no-op for the rest of the PPO family."""
    with warnings.catch_warnings():
        # an iteration with nothing to train on (no correct sample, no pair) before any optimizer step ever
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        while scheduler.last_epoch < step:
            scheduler.step()


@dataclass
class Summary:
    initial_accuracy: float  # greedy test accuracy before RL (iteration 0)
    final_accuracy: float
    iterations: int


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, console: Console | None = None, resume: bool = False):
        self.cfg, tc, mc = cfg, cfg.train, cfg.model
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        device = resolve_device(mc.device)
        distributed.init(cpu=device.type == "cpu")
        self.device = distributed.local_device(device)
        self.is_main = distributed.is_main()
        self.console = (console or make_console()) if self.is_main else make_console(quiet=True)  # rank 0 speaks
        self.backend = backend_from_launch(tc)
        check_sizes(cfg, self.backend)  # before the SFT warm start, not at the first update

        with distributed.main_process_first():  # rank 0 fills the SFT / GGUF cache, the others reuse it
            init_path = initial_model_path(cfg, self.console)
        resumed = load_latest(self.run_dir) if resume else None
        rank = distributed.rank() if distributed.active() else None
        setup = build_setup(cfg, str(resumed.policy_dir) if resumed else init_path, self.device, trained=True, rank=rank)
        self.tokenizer, self.task, self.engine = setup.tokenizer, setup.task, setup.engine
        self.encode, self.decode = setup.codec.encode, setup.codec.decode
        self.sampling = setup.rollouts
        self.train_set, self.test_set = self.task.train_problems(), self.task.test_problems()
        self.reference = load_model(init_path, mc.dtype, self.device, mc.trust_remote_code)
        self.reference.requires_grad_(False).eval()
        self.policy = self.trained(setup.model, tc.lr)

        self.method = METHODS[cfg.algo.name]
        self.critic: Critic | None = None
        if self.method.value_model:
            if resumed and resumed.value_dir is None:
                raise FileNotFoundError(f"the checkpoint of iteration {resumed.iteration} has no value network")
            value_path = str(resumed.value_dir) if resumed else init_path
            value_model = load_value_model(value_path, mc.dtype, self.device, mc.trust_remote_code, tc.seed)
            value_lr = cfg.algo.ppo.value_lr if cfg.algo.ppo.value_lr is not None else tc.lr
            self.critic = Critic(self.trained(value_model, value_lr), cfg.algo.ppo, tc)

        if self.is_main:
            models = [m for m in (self.policy.model, self.value_model) if m is not None]
            check_free_space(self.run_dir, checkpoint_bytes(*models), cfg.logging.keep_checkpoints)

        self.start_iteration = 0
        if resumed:
            self.policy.load_optimizer_state(resumed.state["optimizer"])
            self.policy.scheduler.load_state_dict(resumed.state["scheduler"])
            if self.critic is not None:
                self.critic.load_state_dict(resumed.state)
            set_rng_state(resumed.state["rng"])
            self.start_iteration = resumed.iteration
            self.console.print(f"resuming {self.run_dir} after iteration {resumed.iteration}")
        elif resume:
            self.console.print(f"{self.run_dir} has no checkpoint yet: starting from iteration 0")
        self.log: RunLog | None = None  # rank 0 alone writes the run directory
        self.last_accuracy = float("nan")
        if self.is_main:
            self.log = RunLog(
                self.run_dir, cfg.logging.tensorboard, keep_through=self.start_iteration if resumed else -1,
                wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
                config=cfg.model_dump(mode="json"),
            )
            self.last_accuracy = self.log.last("eval/accuracy")
            (self.run_dir / CONFIG_FILE).write_text(config_to_yaml(cfg))

    def trained(self, model, lr: float) -> Trained:
        """`model` wrapped by the run's backend, with AdamW and the warmup-decay schedule over the run's optimizer
        steps (the policy's and the value network's alike, PAPER-NOTES 2.5)."""
        tc = self.cfg.train
        if self.cfg.model.gradient_checkpointing or self.backend.activation_checkpointing:
            enable_activation_checkpointing(model)
        optimizer = self.backend.wrap(
            model, lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                                    weight_decay=tc.weight_decay)
        )
        total_steps = tc.iterations * self.steps_per_iteration
        scheduler = linear_warmup_decay(optimizer, round(tc.warmup_ratio * total_steps), total_steps)
        return Trained(model, optimizer, scheduler, self.backend)

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps of an iteration that trains on all its episodes (every PPO-family iteration)."""
        tc = self.cfg.train
        return tc.epochs * tc.prompts_per_iteration * tc.samples_per_prompt // tc.mini_batch_size

    # -- the loop ----------------------------------------------------------------------------------------------
    def train(self) -> Summary:
        """Run the remaining iterations. In a data-parallel run every rank trains; rank 0 alone evaluates, logs
        and checkpoints (the others wait for it at the next iteration's first collective)."""
        cfg, tc = self.cfg, self.cfg.train
        with Bars(self.console, cfg.logging.progress and self.is_main) as bars:
            self.bars = bars
            advance_run = bars.overall("iterations", tc.iterations, completed=self.start_iteration)
            if self.start_iteration == 0:
                metrics = self.evaluate()
                if self.is_main:
                    self.log.log(0, metrics)
                    self.console.print(f"iteration 0: greedy test accuracy {metrics['eval/accuracy']:.1%}")
            for iteration in range(self.start_iteration, tc.iterations):
                done = iteration + 1
                try:
                    metrics = distributed.average_metrics(self.iteration(iteration))
                except NonFiniteError as exc:
                    raise TrainingError(
                        f"iteration {done}: {exc}; stopped without writing a checkpoint (the last good one is in "
                        f"{self.run_dir / 'checkpoints'})"
                    ) from exc
                if done % tc.eval_every == 0 or done == tc.iterations:
                    metrics.update(self.evaluate())
                if self.is_main:
                    self.log.log(done, metrics)
                    self.report(done, metrics)
                if done % tc.checkpoint_every == 0 or done == tc.iterations:
                    self.save(done)
                advance_run(1)
        distributed.barrier()
        if not self.is_main:
            return Summary(float("nan"), float("nan"), tc.iterations)
        self.log.close()
        initial = next((r["eval/accuracy"] for r in self.log.records if r["iteration"] == 0), float("nan"))
        return Summary(initial, self.last_accuracy, tc.iterations)

    @property
    def value_model(self):
        """The value network of a method that trains one (PPO); None for every other method."""
        return self.critic.model if self.critic else None

    def save(self, done: int) -> None:
        """Checkpoint the state after `done` iterations (atomically; vineppo.checkpoint). Every rank calls it:
        sharded weights and optimizer states are gathered on rank 0, which writes."""
        weights = [self.policy.full_weights(), self.critic.trained.full_weights() if self.critic else None]
        optimizer_state = self.policy.optimizer_state()
        extra_state = self.critic.state_dict() if self.critic else None
        if self.is_main:
            save_checkpoint(
                self.run_dir, done, self.policy.model, self.tokenizer, optimizer_state, self.policy.scheduler,
                self.cfg.logging.keep_checkpoints, value_model=self.value_model, extra_state=extra_state,
                weights=weights,
            )

    def iteration(self, iteration: int) -> dict[str, float]:
        """One iteration, as the paper's algorithm box: sample -> credit -> update; the parts return their own
        metrics."""
        ctx = self.context(iteration)
        timings: dict[str, float] = {}
        metrics: dict[str, float] = {"tokens/mc": 0}  # MC rollout tokens: VinePPO's estimator reports its own
        with self.backend.gathered(self.policy.model, self.value_model):  # the ranks generate unequal amounts
            with self.timed("sample", timings):
                samples = self.sample(ctx)
            episodes = list(samples)  # to train on: the credit may add or drop some (VinePPO's options)
            with self.timed("credit", timings):
                if self.method.credit is not None:
                    metrics.update(self.method.credit(episodes, ctx))
        check_finite(episodes)
        if self.log is not None:
            shown = samples[: self.cfg.logging.samples_per_iteration]
            self.log.log_samples(iteration + 1, [episode_record(e, self.decode) for e in shown])
        with self.timed("update", timings):
            metrics.update(self.method.update(episodes, ctx))
            self.engine.sync_weights()
        catch_up(self.policy.scheduler, (iteration + 1) * self.steps_per_iteration)
        return {
            **sample_metrics(samples),
            **advantage_metrics(samples),
            **metrics,
            **self.grader_metrics(),
            **{f"time/{name}": seconds for name, seconds in timings.items()},
        }

    def context(self, iteration: int) -> Context:
        """What the method's credit and update read in this iteration; every random draw is seeded from it."""
        seed = iteration_seed(self.cfg.train.seed, iteration)
        return Context(
            self.cfg, self.engine, self.task, self.decode, self.sampling, self.device, seed=seed,
            generator=torch.Generator(device=self.device).manual_seed(rank_seed(seed, distributed.rank())),
            whiten=whitens(self.cfg.algo), policy=self.policy, reference=self.reference, critic=self.critic,
            bars=self.bars,
        )

    def sample(self, ctx: Context) -> list[Episode]:
        """This rank's share of the iteration's `prompts_per_iteration` training problems (drawn with the
        iteration's seed, so the data position is the iteration number), `samples_per_prompt` responses each."""
        tc = self.cfg.train
        problems = random.Random(ctx.seed).sample(self.train_set, min(tc.prompts_per_iteration, len(self.train_set)))
        problems = problems[distributed.rank() :: distributed.world_size()]
        with self.bars.phase("sampling", len(problems)) as bar:
            return sample_episodes(ctx, problems, tc.samples_per_prompt, self.encode, bar.advance)

    def evaluate(self) -> dict[str, float]:
        """Greedy test metrics. Every rank calls it (sharded weights are gathered for it); rank 0 alone evaluates,
        the others get {}."""
        with self.policy.gathered():
            if not self.is_main:
                return {}
            started = time.perf_counter()
            with self.bars.phase("eval (greedy)", len(self.test_set)) as bar:
                metrics = greedy_metrics(greedy_rollouts(
                    self.engine, self.encode, self.decode, self.task, self.test_set, self.cfg.engine.max_new_tokens,
                    on_progress=bar.advance,
                ))
        metrics["time/eval"] = time.perf_counter() - started
        self.last_accuracy = metrics["eval/accuracy"]
        return metrics

    def grader_metrics(self) -> dict[str, float]:
        """The GSM8K / MATH grader's counters since the run started (timeouts and crashed workers give reward 0)."""
        grader = getattr(self.task, "grader", None)
        return {f"grader/{name}": value for name, value in vars(grader.stats).items()} if grader else {}

    @contextmanager
    def timed(self, name: str, into: dict[str, float]):
        started = time.perf_counter()
        yield
        into[name] = time.perf_counter() - started

    def report(self, done: int, m: dict[str, float]) -> None:
        losses = " ".join(
            f"{name.split('/')[1]} {m[name]:.4f}" for name in ("loss/kl", "loss/clipfrac", "loss/dpo") if name in m
        )
        line = (
            f"iteration {done}/{self.cfg.train.iterations}: reward {m['train/reward']:.3f} {losses} "
            f"(sample {m['time/sample']:.1f}s, credit {m['time/credit']:.1f}s, update {m['time/update']:.1f}s)"
        )
        if "eval/accuracy" in m:
            line += f"  test accuracy {m['eval/accuracy']:.1%}"
        self.console.print(line, markup=False, highlight=False)
