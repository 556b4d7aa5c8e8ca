"""Sampling engines: produce completions (token ids, log-probs, finish reasons) from token prefixes."""

from vineppo.engine.base import Completion, Engine, SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
