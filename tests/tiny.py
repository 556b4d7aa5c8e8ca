"""Settings for end-to-end runs in tests: a model and task small enough that a run takes seconds."""

from pathlib import Path

TINY = [
    "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.intermediate_size=64",
    "model.sft.steps=30", "model.sft.batch_size=16",
    "task.arithmetic.num_ops=2", "task.arithmetic.train_size=200", "task.arithmetic.test_size=8",
    "engine.max_new_tokens=24", "algo.k=2",
    "train.prompts_per_iteration=4", "train.samples_per_prompt=2", "train.mini_batch_size=4",
    "train.micro_batch_size=2", "train.eval_every=2", "train.checkpoint_every=1",
    "logging.progress=false", "logging.keep_checkpoints=3",
]


def sft_cache_dir(base: Path) -> str:
    """One SFT cache for the whole session, so the tiny SFT model is trained once."""
    return str(base / "vineppo-cache")
