"""Supervised fine-tuning before RL: `stage` for any Hugging Face causal LM (`vineppo sft`; import it from
vineppo.sft.stage, as it loads transformers' Trainer), `warm_start` for the built-in tiny model (cached, run by
`vineppo train` itself); `examples` is the data both train on."""

from vineppo.sft.warm_start import ensure_sft_model, train_sft

__all__ = ["ensure_sft_model", "train_sft"]
