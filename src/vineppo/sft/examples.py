"""SFT examples as both SFT loops see them: prompt + gold response token ids, with the loss on the response only.

The prompt is encoded exactly as the RL run encodes it (`TextCodec.encode`: the tokenizer's own special tokens,
e.g. BOS), and the response (`Problem.solution`, already in the task's prompt format) follows it unchanged, then
eos: what the policy learns to write is what RL will sample and grade.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from vineppo.tasks.base import Problem

IGNORE = -100
"""The label of a position that is not trained on (the prompt, padding): PyTorch's and transformers' ignore_index."""


class Example(NamedTuple):
    ids: list[int]
    """bos + prompt + response + eos token ids."""
    prompt_length: int
    """The leading ids that are not trained on."""


def encode_examples(tokenizer: PreTrainedTokenizerBase, problems: list[Problem]) -> list[Example]:
    prompts = tokenizer([p.prompt for p in problems]).input_ids
    responses = tokenizer([p.solution for p in problems], add_special_tokens=False).input_ids
    return [
        Example(prompt + response + [tokenizer.eos_token_id], len(prompt))
        for prompt, response in zip(prompts, responses)
    ]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are the input ids with prompt and padding positions masked out."""
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
