import pytest

from vineppo.steps import estimated_boundaries, merge_unsurprising_steps, split_steps, step_spans


def chars(text):
    return list(text)


def test_one_step_per_line_char_tokens():
    text = "5+3=8\n8*4=2\n#2"
    assert split_steps(chars(text)) == [0, 6, 12]


def test_blank_lines_join_the_step_before_and_leading_blanks_the_first():
    assert split_steps(chars("\n\na\n\n\nb\n")) == [0, 6]


def test_no_newline_and_empty_response():
    assert split_steps(chars("abc")) == [0]
    assert split_steps([]) == [0]
    assert split_steps(["", ""]) == [0]


def test_truncated_response_and_trailing_eos():
    # a response cut mid-line, and one ending with an eos token that decodes to ""
    assert split_steps(chars("1+1=2\n2+")) == [0, 6]
    assert split_steps(chars("1+1=2\n#2") + [""]) == [0, 6]


def test_a_step_starts_at_the_token_holding_its_first_character():
    tokens = ["Step one.\n", "Then", " two", ".\n", "\nSo", " 3"]
    # text: "Step one.\nThen two.\n\nSo 3"; steps start at chars 10 ("Then") and 21 ("So"), which is in token 4
    assert split_steps(tokens) == [0, 1, 4]
    # two steps starting inside one token merge
    assert split_steps(["a", "\nb\nc", "d"]) == [0, 1]
    assert split_steps(["a\n", "b\n", "c"]) == [0, 1, 2]


def test_a_cap_c_estimates_boundaries_s0_to_sc():
    assert [estimated_boundaries(30, 25), estimated_boundaries(26, 25), estimated_boundaries(4, 25)] == [26, 26, 4]
    assert estimated_boundaries(30, None) == 30 and estimated_boundaries(3, 0) == 1
    with pytest.raises(ValueError, match=">= 0"):
        estimated_boundaries(3, -1)
    assert step_spans([0, 2], 8) == [(0, 2), (2, 8)]  # a last kept step runs to the end: the "merge" of the tail


def test_steps_merge_until_the_tokens_since_the_last_kept_boundary_hold_enough_surprisal():
    logprobs = [-1.0, 0.0, -0.2, 0.0, -0.5, 0.0, -0.1, 0.0]  # steps of 2 tokens: surprisal 1.0, 0.2, 0.5, 0.1
    starts = [0, 2, 4, 6]
    assert merge_unsurprising_steps(starts, logprobs, 0.6) == [0, 2, 6]  # 1.0 >= 0.6; 0.2 < 0.6; 0.2 + 0.5 >= 0.6
    assert merge_unsurprising_steps(starts, logprobs, 0.15) == [0, 2, 4, 6]
    assert merge_unsurprising_steps(starts, logprobs, 1.5) == [0, 6]  # 1.0 + 0.2 < 1.5 <= 1.0 + 0.2 + 0.5
    assert merge_unsurprising_steps(starts, logprobs, 2.0) == [0]  # the last step's own tokens never count
    assert merge_unsurprising_steps(starts, [0.0] * 8, 0.0) == starts  # 0 keeps every boundary, even at surprisal 0


def test_steps_cover_the_response_and_rejoin_to_it():
    tokens = ["x", "=", "1", "\n", "\n", "y", "\n", "#", "1", ""]
    starts = split_steps(tokens)
    spans = step_spans(starts, len(tokens))
    assert spans[0][0] == 0 and spans[-1][1] == len(tokens)
    assert all(a < b for a, b in spans)
    assert "".join("".join(tokens[a:b]) for a, b in spans) == "".join(tokens)
    assert ["".join(tokens[a:b]) for a, b in spans] == ["x=1\n\n", "y\n", "#1"]


def steps_of(text: str) -> list[str]:
    """The steps of `text` with one token per character."""
    chars = list(text)
    return ["".join(chars[b:e]) for b, e in step_spans(split_steps(chars), len(chars))]


def test_latex_display_blocks_and_boxed_answers_stay_in_one_step():
    text = "We have\n\\[\nx = 1\n\\]\nso\n$$a\nb$$\nthen\n\\begin{align}\ny &= 2 \\\\\nz &= 3\n\\end{align}\n\\boxed{\\frac{1\n}{2}}"
    assert steps_of(text) == [
        "We have\n", "\\[\nx = 1\n\\]\n", "so\n", "$$a\nb$$\n", "then\n",
        "\\begin{align}\ny &= 2 \\\\\nz &= 3\n\\end{align}\n", "\\boxed{\\frac{1\n}{2}}",
    ]


def test_nested_environments_and_unclosed_blocks():
    nested = "a\n\\begin{x}\n\\begin{x}\n1\n\\end{x}\n2\n\\end{x}\nb"
    assert steps_of(nested) == ["a\n", "\\begin{x}\n\\begin{x}\n1\n\\end{x}\n2\n\\end{x}\n", "b"]
    assert steps_of("a\n\\[\nnever closed\nc") == ["a\n", "\\[\nnever closed\nc"]
    assert steps_of("a\n\\boxed{1\n2") == ["a\n", "\\boxed{1\n2"]
