"""Models and tokenizers: the tiny-model factory for the built-in task, and loading of any Hugging Face causal LM.

Every model here is an ordinary `transformers` model, so a run's checkpoint directory opens with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` outside this package too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from vineppo.config import TinyModelConfig

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model or tokenizer path that cannot be loaded; the message names the path and what was expected."""


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet` (newline included) plus <pad>, <bos>, <eos>.

    Character tokens keep the vocabulary tiny (19 symbols for the arithmetic task), which is what lets a
    sub-million-parameter model learn the task in minutes on a CPU (DESIGN.md). A BPE model with no merges maps
    each character to its own token without any pre-tokenizer, so whitespace and newlines are ordinary tokens; the
    Fuse decoder joins tokens without inserting spaces, so decode(encode(text)) == text. The post-processor
    prepends <bos>, as the model was trained with it. Characters outside `alphabet` are dropped when encoding
    (there is no <unk>): the tokenizer is built from the task's own alphabet.
    """
    chars = sorted(set(alphabet))
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens([PAD, BOS, EOS])
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised Llama of the configured shape over `tokenizer`'s vocabulary (uses torch's global RNG).

    Input and output embeddings are tied: at this size the two vocabulary matrices would otherwise be a large
    share of the parameters for no gain.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def resolve_device(name: str) -> torch.device:
    """"auto" means cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_source(path: str | Path) -> None:
    """Fail early, naming the path, for a local path that is missing or is not a saved model.

    A missing path that could still be a hub id ("owner/name") is left to `from_pretrained`.
    """
    text = str(path)
    local = Path(text).expanduser()
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local and not local.exists():
        raise ModelLoadError(f"model path '{path}' does not exist (expected a model directory or a hub id)")
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"model path '{path}' exists but is not a Hugging Face model directory (expected a config.json in it)"
        )


def load_model(
    path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> PreTrainedModel:
    """A causal LM from a local directory or a hub id, in `dtype` ("float32", "bfloat16", "float16"), on `device`."""
    _check_source(path)
    local = Path(path).expanduser()
    use_safetensors = True if local.is_dir() and any(local.glob("*.safetensors")) else None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.exists() else str(path),
            dtype=_DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors,
        )
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load a model from '{path}': expected a local model directory (config.json + weights) "
            f"or a Hugging Face hub id ({exc})"
        ) from exc
    return model.to(resolve_device(str(device)) if isinstance(device, str) else device)


def load_value_model(
    path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu", trust_remote_code: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """The PPO baseline's value network: the policy's architecture with a scalar head on every token's last hidden
    state (PAPER-NOTES 2.5), as transformers' `AutoModelForTokenClassification` with one label (`score` head).

    From a causal LM (the SFT model) the body is copied and the new head is initialised as in the paper: weights
    N(0, std 1/sqrt(h + 1)), bias 0 (the head has a bias, as the paper's), drawn from a generator seeded with
    `seed` (the run's train.seed), so that a PPO run is reproducible. From a saved value network (a resumed
    run's `value/` directory) the trained head is kept. The head's dropout (transformers' default 0.1) is turned
    off: PAPER-NOTES records none, and with it the values of the credit pass and of the update would differ.
    """
    _check_source(path)
    local = Path(path).expanduser()
    source = str(local) if local.exists() else str(path)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=1, trust_remote_code=trust_remote_code)
        config.classifier_dropout = 0.0
        model, info = AutoModelForTokenClassification.from_pretrained(
            source,
            config=config,
            dtype=_DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a value network from '{path}' ({exc})") from exc
    if "score.weight" in info["missing_keys"]:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            head = torch.empty(model.score.weight.shape).normal_(0.0, 1.0 / math.sqrt(model.score.in_features + 1),
                                                               generator=generator)
            model.score.weight.copy_(head)
            model.score.bias.zero_()
    return model.to(resolve_device(str(device)) if isinstance(device, str) else device)


def chat_template_of(tokenizer: PreTrainedTokenizerBase):
    """The tokenizer's `apply_chat_template` when it has a chat template (for `prompt_format: chat`), else None."""
    return tokenizer.apply_chat_template if getattr(tokenizer, "chat_template", None) else None


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (`model.gradient_checkpointing`). transformers 5.24 renamed
    the method; the GPU machines' 5.17 may only have the old name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


class TextCodec:
    """Text <-> token ids as every part of vineppo uses them: the tokenizer's own encoding (with the special tokens
    it adds, e.g. BOS), and decoding without special tokens (so eos and padding never reach a grader)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model; one without a pad token pads with eos (batched generation needs one)."""
    _check_source(path)
    local = Path(path).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if local.exists() else str(path), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from '{path}': expected a local model directory with tokenizer files "
            f"or a Hugging Face hub id ({exc})"
        ) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer at '{path}' has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
