"""Cut a response into reasoning steps, as token offsets.

The paper splits GSM8K responses at newlines (PAPER-NOTES 2.7): a step is a line together with the newline that
ends it; blank lines are merged into the step before them (leading ones into the first step), and the final
answer line is a step of its own here (the paper merges "#### N" into the last step for GSM8K).
Splitting works on characters and then maps back to tokens: a step starts at the token that holds the step's
first character, so a token that straddles a line break (".\nSo") opens the new step, two steps that begin inside
one token merge, and tokens that decode to nothing (eos) stay in the step in progress. (The official code assigns
a token to the step of its *first* character instead; that splits "\nSo" from " 3".)

A newline inside a LaTeX display block (\\[...\\], $$...$$, \\begin{env}...\\end{env}) or a \\boxed{...} does not
end a line, so such a block stays within one step (MATH solutions); the official code's MATH splitter is a longer
heuristic (PAPER-NOTES 2.7) that we do not reproduce.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

_LATEX_OPENER = re.compile(r"\\\[|\$\$|\\begin\{([^{}]*)\}|\\boxed\{")


def _closing(text: str, opener: re.Match) -> int:
    """The offset just past the end of the LaTeX block `opener` starts (the end of the text if it never closes)."""
    mark, pos = opener.group(), opener.end()
    if mark in ("\\[", "$$"):
        end = text.find("\\]" if mark == "\\[" else "$$", pos)
        return len(text) if end < 0 else end + 2
    if mark == "\\boxed{":
        depth = 1
        for i in range(pos, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return i + 1
        return len(text)
    name, depth = re.escape(opener.group(1)), 1
    for m in re.finditer(rf"\\(begin|end)\{{{name}\}}", text[pos:]):
        depth += 1 if m.group(1) == "begin" else -1
        if depth == 0:
            return pos + m.end()
    return len(text)


def _protected(text: str) -> list[bool]:
    """For each character, whether it lies inside a LaTeX display block (\\[...\\], $$...$$,
    \\begin{env}...\\end{env}) or a \\boxed{...}: a newline there does not start a step."""
    inside = [False] * len(text)
    pos = 0
    while (opener := _LATEX_OPENER.search(text, pos)) is not None:
        end = _closing(text, opener)
        inside[opener.start() : end] = [True] * (end - opener.start())
        pos = max(end, opener.end())
    return inside


def _line_starts(text: str) -> list[int]:
    """Character offsets where each step starts: just after the last newline that precedes a line with content.

    A step is thus a line plus any blank lines after it; leading blank lines belong to the first step. Newlines
    inside a LaTeX display block or a \\boxed{} do not end a line, so such a block stays within one step.
    """
    starts = [0]
    seen_content = False
    newline_after_content: int | None = None  # offset just past the latest newline since the last content
    protected = _protected(text)
    for pos, char in enumerate(text):
        if char == "\n" and not protected[pos]:
            if seen_content:
                newline_after_content = pos + 1
        elif not char.isspace():
            if newline_after_content is not None:
                starts.append(newline_after_content)
                newline_after_content = None
            seen_content = True
    return starts


def split_steps(token_texts: Sequence[str]) -> list[int]:
    """Token offsets at which each step starts: step i is tokens[starts[i]:starts[i+1]] (the last runs to the end).

    `token_texts[t]` is the text of token t (empty for special tokens); their concatenation is the response.
    The result starts with 0, is strictly increasing and every offset is < len(token_texts), so every step holds
    at least one token; an empty response gives [0] (one empty step).
    """
    text = "".join(token_texts)
    starts = [0]
    token, token_end = 0, len(token_texts[0]) if token_texts else 0
    for char_start in _line_starts(text)[1:]:
        while token_end <= char_start:  # find the token holding the step's first character
            token += 1
            token_end += len(token_texts[token])
        if token > starts[-1]:
            starts.append(token)
    return starts


def merge_unsurprising_steps(starts: Sequence[int], logprobs: Sequence[float], min_surprisal: float) -> list[int]:
    """The step starts left when a boundary is kept only once the tokens since the last kept one hold at least
    `min_surprisal` nats of surprisal (minus the sum of their sampled log-probs); the steps in between merge into
    one. The first start is always kept, and `min_surprisal` 0 keeps them all. Whether a boundary is kept reads
    only the tokens before it, which keeps VinePPO's advantages unbiased (vineppo.credit.vine)."""
    if min_surprisal <= 0:
        return list(starts)
    kept = [starts[0]]
    for start in starts[1:]:
        if -sum(logprobs[kept[-1] : start]) >= min_surprisal:
            kept.append(start)
    return kept


def estimated_boundaries(num_steps: int, cap: int | None) -> int:
    """How many step boundaries s_0, s_1, ... of a response with `num_steps` steps get a value estimate: all of
    them, or s_0 .. s_cap, cap + 1 of them (the official `max_step_for_value_estimation`, PAPER-NOTES 3.2: 25
    estimates 26 values on GSM8K)."""
    if cap is not None and cap < 0:
        raise ValueError(f"the cap on estimated step boundaries must be >= 0 or None, got {cap}")
    return num_steps if cap is None else min(num_steps, cap + 1)


def step_spans(starts: Sequence[int], num_tokens: int) -> list[tuple[int, int]]:
    """[(begin, end)) token ranges of the steps given by `split_steps`."""
    ends = list(starts[1:]) + [num_tokens]
    return list(zip(starts, ends))


class TokenTexts:
    """Decoded text of single tokens, cached per id (special tokens decode to "")."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        for i in ids:
            if i not in self._cache:
                self._cache[i] = self._decode([i])
        return [self._cache[i] for i in ids]
