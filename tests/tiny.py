"""Settings for end-to-end runs in tests: a model and task small enough that a run takes seconds."""

import sys
from pathlib import Path

TINY = [
    "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.intermediate_size=64",
    "model.tiny.sft.steps=30", "model.tiny.sft.batch_size=16",
    "task.arithmetic.num_ops=2", "task.arithmetic.train_size=200", "task.arithmetic.test_size=8",
    "engine.max_new_tokens=24", "algo.vineppo.k=2",
    "train.prompts_per_iteration=4", "train.samples_per_prompt=2", "train.mini_batch_size=4",
    "train.micro_batch_size=2", "train.eval_every=2", "train.checkpoint_every=1",
    "logging.progress=false", "logging.keep_checkpoints=3",
]


def sft_cache_dir(base: Path) -> str:
    """One SFT cache for the whole session, so the tiny SFT model is trained once."""
    return str(base / "vineppo-cache")


ACCELERATE_CONFIGS = Path(__file__).parents[1] / "configs" / "accelerate"


def cpu_launch_config(name: str, out_dir: Path) -> Path:
    """The shipped accelerate config `name` (configs/accelerate/NAME.yaml) for 2 CPU processes instead of 8 GPUs,
    written into `out_dir`."""
    text = (ACCELERATE_CONFIGS / f"{name}.yaml").read_text()
    text = text.replace("use_cpu: false", "use_cpu: true").replace("num_processes: 8", "num_processes: 2")
    path = out_dir / f"{name}-cpu.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("gpu_ids")))
    return path


def launched_train_command(config: Path, run_dir: Path) -> list[str]:
    """`accelerate launch --config_file CONFIG -m vineppo.cli train`: one tiny iteration into `run_dir`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "vineppo.cli",
            "train", "--run-dir", str(run_dir), *TINY, "train.iterations=1"]


FIXTURES = Path(__file__).parent / "fixtures"
GSM8K_FIXTURES = [
    "task.name=gsm8k",
    f"task.gsm8k.train_source={FIXTURES / 'gsm8k_train4.jsonl'}",
    f"task.gsm8k.test_source={FIXTURES / 'gsm8k_test2.jsonl'}",
    "engine.max_new_tokens=8", "logging.progress=false", "logging.tensorboard=false",
]
"""GSM8K from the 4 + 2 problems of tests/fixtures, with short responses: for the byte-level Llama below."""


def launched_sft_command(config: Path, run_dir: Path, model: Path) -> list[str]:
    """`accelerate launch --config_file CONFIG -m vineppo.cli sft`: one step of 4 GSM8K solutions, 2 per process."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "vineppo.cli",
            "sft", "--run-dir", str(run_dir), f"model.path={model}", *GSM8K_FIXTURES,
            "sft.epochs=1", "sft.batch_size=4", "sft.micro_batch_size=2"]


def save_byte_llama(path: Path) -> Path:
    """A randomly initialised 1-layer Llama with a byte-level tokenizer (every byte one token, BOS added) saved as
    a Hugging Face model directory: a stand-in for a pretrained model that reads any text, in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + pre_tokenizers.ByteLevel.alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
