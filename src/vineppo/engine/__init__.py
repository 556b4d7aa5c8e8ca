"""Sampling engines: produce completions (token ids, log-probs, finish reasons) from token prefixes."""

from vineppo.engine.base import Completion, Engine, SamplingParams


def build_engine(cfg, model, tokenizer, model_path: str, rank: int | None = None) -> Engine:
    """The engine `cfg.engine.name` names, sampling from `model` (whose weights were loaded from `model_path`;
    None for vLLM when no weights will be synced, as in evaluation). `rank`: the process's rank in a
    multi-process run, None alone."""
    if cfg.engine.name == "vllm":
        from vineppo.engine.vllm import VLLMEngine  # vLLM is imported only when asked for

        return VLLMEngine(
            model_path, model, tokenizer, dtype=cfg.model.dtype, gpu_memory_utilization=cfg.engine.gpu_memory_utilization,
            seed=cfg.train.seed, rank=rank, trust_remote_code=cfg.model.trust_remote_code,
        )
    from vineppo.engine.hf import HFEngine

    return HFEngine(model, tokenizer, batch_size=cfg.engine.batch_size, share_prefixes=cfg.engine.share_prefixes)


__all__ = ["Completion", "Engine", "SamplingParams", "build_engine"]
