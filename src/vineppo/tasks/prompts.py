"""Prompt formats shared by the GSM8K and MATH tasks.

- `plain` (the paper's, PAPER-NOTES 2.8; zero-shot, the same for training and evaluation): the problem after a
  `[MATH_TASK] Problem:` header, then `Solution:`; the response starts on a new line, one reasoning step per line,
  and sampling stops at `PLAIN_STOP` (or a new `[MATH_TASK]` header), where a model that goes on would start a new
  problem. `few_shot` solved training problems, each ended by `EXAMPLE_SEPARATOR`, may come first.
- `chat`: the model's own chat template, applied by a callable such as a tokenizer's `apply_chat_template`
  (passed in, so that the format is testable without a tokenizer); the response ends at the model's eos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from vineppo.config import ConfigError

PromptFormat = Literal["plain", "chat"]
ApplyChatTemplate = Callable[..., str]

PLAIN_STOP = "\n\n\nProblem:"
EXAMPLE_SEPARATOR = "\n\n\n"  # after each few-shot example; a model that writes it next starts a new problem


def plain_prompt(problem: str) -> str:
    return f"[MATH_TASK] Problem:\n{problem}\n\nSolution:"


def chat_prompt(apply_chat_template: ApplyChatTemplate, problem: str, instruction: str) -> str:
    """The user turn (the problem, then the task's instruction) rendered by the chat template, ready for the
    assistant's reply."""
    messages = [{"role": "user", "content": f"{problem}\n\n{instruction}"}]
    return apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_prompt_format(prompt_format: PromptFormat, apply_chat_template: ApplyChatTemplate | None) -> None:
    if prompt_format == "chat" and apply_chat_template is None:
        raise ConfigError(
            "prompt_format 'chat' needs the model's chat template (a tokenizer with `apply_chat_template`); "
            "use prompt_format 'plain' for a model without one"
        )


def make_prompt(
    prompt_format: PromptFormat, problem: str, instruction: str, apply_chat_template: ApplyChatTemplate | None
) -> str:
    check_prompt_format(prompt_format, apply_chat_template)
    if prompt_format == "plain":
        return plain_prompt(problem)
    return chat_prompt(apply_chat_template, problem, instruction)


def response_text(prompt_format: PromptFormat, solution: str) -> str:
    """A gold solution as the response that follows the prompt: newline-led in the plain format."""
    return "\n" + solution if prompt_format == "plain" else solution


def stop_sequences(prompt_format: PromptFormat) -> tuple[str, ...]:
    return (PLAIN_STOP, EXAMPLE_SEPARATOR + "[MATH_TASK]") if prompt_format == "plain" else ()
