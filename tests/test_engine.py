"""HFEngine against independent references: full uncached forward passes and exact sampling probabilities.

The model is a tiny random Llama; its lm_head is scaled up so next-token distributions are peaked (as a trained
model's are) and eos (id 2) occurs now and then.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
)

from vineppo.config import load_config
from vineppo.engine import build_engine
from vineppo.engine.base import SamplingParams
from vineppo.engine.hf import HFEngine, shared_prefix_roots

EOS, PAD = 2, 0
PREFIXES = [[1, 5, 6], [1, 7, 8, 9, 10, 11, 3], [1, 4], [1, 12, 13, 14, 15]]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaForCausalLM]:
    # One thread: a model this small gains nothing from two, and when the 2 cores are shared with other processes
    # OpenMP's spinning threads make every matmul ~80x slower (measured: 4.8 ms vs 380 ms per forward).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    yield model
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def any_model(request: pytest.FixtureRequest, model: LlamaForCausalLM) -> PreTrainedModel:
    """Llama's rotary positions are blind to a constant shift; GPT-2's learned ones catch wrong position_ids."""
    if request.param == "llama":
        return model
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2)
    return GPT2LMHeadModel(config).eval()


def engine(model: PreTrainedModel, batch_size: int = 64) -> HFEngine:
    return HFEngine(model, batch_size=batch_size, eos_token_id=EOS, pad_token_id=PAD)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def last_logits(model: LlamaForCausalLM, sequences: list[list[int]]) -> torch.Tensor:
    """Next-token logits after each sequence (all of one length): a plain forward, no cache, no padding."""
    with torch.no_grad():
        return model(torch.tensor(sequences)).logits[:, -1].double()


def nucleus(probs: list[float], top_p: float) -> list[float]:
    """Reference top-p: keep the most likely tokens until their mass reaches top_p, renormalise."""
    keep, mass = set(), 0.0
    for token in sorted(range(len(probs)), key=lambda t: -probs[t]):
        if mass >= top_p:
            break
        keep.add(token)
        mass += probs[token]
    return [p / mass if t in keep else 0.0 for t, p in enumerate(probs)]


def chi_square_z(counts: Counter, expected: dict[tuple[int, ...], float], total: int) -> float:
    """Chi-square statistic as a standard normal z (Wilson-Hilferty); cells with < 5 expected are pooled."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for outcome, p in expected.items():
        if total * p >= 5:
            stat += (counts[outcome] - total * p) ** 2 / (total * p)
            cells += 1
        else:
            pooled_obs, pooled_exp = pooled_obs + counts[outcome], pooled_exp + total * p
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    df = cells - 1
    return ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))


def assert_full_forward_logprobs(model: PreTrainedModel, prefixes, results, temperature: float) -> None:
    """Every completion's log-probs are those of one uncached, unpadded forward pass over prefix + completion."""
    for prefix, samples in zip(prefixes, results):
        for completion in samples:
            sequence = torch.tensor([prefix + completion.token_ids])
            with torch.no_grad():
                logits = model(input_ids=sequence).logits[0, len(prefix) - 1 : -1]
            expected = torch.log_softmax(logits / temperature, dim=-1).gather(1, sequence[0, len(prefix) :, None])
            assert completion.logprobs == pytest.approx(expected.squeeze(1).tolist(), abs=1e-4)


def test_greedy_continuation_of_a_prefix_extends_the_shorter_prefix(any_model: PreTrainedModel) -> None:
    eng = engine(any_model)
    prompt = PREFIXES[0]
    (reference,) = eng.generate([prompt], 1, SamplingParams(temperature=0.0, max_new_tokens=16))[0]
    r = reference.token_ids
    assert len(r) == 16, "the test wants a long greedy response"

    cuts = [0, 3, 8]
    batch = [prompt + r[:j] for j in cuts] + PREFIXES[1:]  # lengths 3, 6, 11, 7, 2, 5: heavy left padding
    results = eng.generate(batch, 2, SamplingParams(temperature=0.0, max_new_tokens=8))
    for j, samples in zip(cuts, results):
        for completion in samples:
            assert completion.token_ids == r[j : j + 8]
            assert completion.logprobs == pytest.approx(reference.logprobs[j : j + 8], abs=1e-4)


def test_logprobs_match_a_full_forward_pass(any_model: PreTrainedModel) -> None:
    temperature = 0.7
    params = SamplingParams(temperature=temperature, top_p=0.9, max_new_tokens=12)
    results = engine(any_model, batch_size=8).generate(PREFIXES, 3, params, generator=seeded(1))
    assert_full_forward_logprobs(any_model, PREFIXES, results, temperature)


def test_first_two_tokens_follow_the_exact_distribution(model: LlamaForCausalLM) -> None:
    """Two prefixes of different lengths, 2000 samples each, in one group: KV expansion must keep rows apart."""
    temperature, top_p, n = 0.8, 0.9, 2000
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=2)
    prefixes = [PREFIXES[0], PREFIXES[1]]
    results = engine(model, batch_size=2 * n).generate(prefixes, n, params, generator=seeded(2))

    def exact(prefix: list[int]) -> dict[tuple[int, ...], float]:
        """P(first two tokens), each conditional taken from an uncached forward pass over prefix (+ first token)."""
        first = nucleus(torch.softmax(last_logits(model, [prefix]) / temperature, -1)[0].tolist(), top_p)
        second = torch.softmax(last_logits(model, [prefix + [t] for t in range(32)]) / temperature, -1).tolist()
        joint = {(EOS,): first[EOS]}
        for t1 in range(32):
            if t1 != EOS:
                joint.update({(t1, t2): first[t1] * p for t2, p in enumerate(nucleus(second[t1], top_p))})
        return joint

    expected = [exact(p) for p in prefixes]
    counts = [Counter(tuple(c.token_ids) for c in samples) for samples in results]
    for count, probs in zip(counts, expected):
        assert all(probs.get(outcome, 0.0) > 0 for outcome in count), "sampled outside the top-p nucleus"
        assert chi_square_z(count, probs, n) < 4
    # The check has power: one prefix's samples are far from the other prefix's distribution.
    assert chi_square_z(counts[0], expected[1], n) > 10


def test_samples_are_independent_and_reproducible(model: LlamaForCausalLM) -> None:
    eng = engine(model)
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    first = eng.generate(PREFIXES, 8, params, generator=seeded(3))
    again = eng.generate(PREFIXES, 8, params, generator=seeded(3))
    other = eng.generate(PREFIXES, 8, params, generator=seeded(4))
    assert first == again
    assert first != other
    for samples in first:
        assert len(samples) == 8
        assert len({tuple(c.token_ids) for c in samples}) > 4


def test_finish_reasons(model: LlamaForCausalLM) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    completions = [c for samples in engine(model).generate(PREFIXES, 16, params, generator=seeded(5)) for c in samples]
    reasons = Counter(c.finish_reason for c in completions)
    assert reasons["stop"] > 0 and reasons["length"] > 0
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 12 and EOS not in c.token_ids


def test_per_prefix_budgets_cap_new_tokens(model: LlamaForCausalLM) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    full = engine(model).generate(PREFIXES, 2, params)
    budgets = [1 + i % 12 for i in range(len(PREFIXES))]
    capped = engine(model).generate(PREFIXES, 2, params, budgets=budgets)
    for budget, full_samples, capped_samples in zip(budgets, full, capped):
        for a, b in zip(full_samples, capped_samples):
            assert b.token_ids == a.token_ids[:budget]  # greedy: the same tokens, cut at the budget
            ended_early = a.finish_reason == "stop" and len(a.token_ids) <= budget
            assert b.finish_reason == ("stop" if ended_early else "length")
    with pytest.raises(ValueError, match="outside 1..max_new_tokens=12"):
        engine(model).generate(PREFIXES[:1], 1, params, budgets=[13])


def test_small_batches_and_split_samples_give_the_same_greedy_results(model: LlamaForCausalLM) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    big = engine(model, batch_size=64).generate(PREFIXES, 3, params)
    for batch_size in (1, 2, 5):  # 1 and 2 split the 3 samples of one prefix over several groups
        small = engine(model, batch_size=batch_size).generate(PREFIXES, 3, params)
        for big_samples, small_samples in zip(big, small):
            assert len(small_samples) == 3
            for a, b in zip(big_samples, small_samples):
                assert a.token_ids == b.token_ids == big_samples[0].token_ids
                assert a.finish_reason == b.finish_reason
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_per_prefix_counts_in_one_call_give_what_separate_calls_give(model: LlamaForCausalLM) -> None:
    """Uneven counts (as `k_allocation: group_spread` asks) go through one call; greedy rows match the same prefix
    asked alone, and their log-probs a full forward pass's, whatever the grouping (batch sizes 2 and 5 split or
    pack the counts)."""
    counts = [3, 1, 5, 2]
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    alone = [engine(model).generate([p], 1, params)[0][0] for p in PREFIXES]
    for batch_size in (2, 5, 64):
        together = engine(model, batch_size=batch_size).generate(PREFIXES, counts, params)
        assert [len(samples) for samples in together] == counts
        for reference, samples in zip(alone, together):
            for c in samples:
                assert (c.token_ids, c.finish_reason) == (reference.token_ids, reference.finish_reason)
                assert c.logprobs == pytest.approx(reference.logprobs, abs=1e-4)
    sampled = engine(model).generate(PREFIXES, counts, SamplingParams(1.0, max_new_tokens=10), seeded(2))
    assert [len(samples) for samples in sampled] == counts
    assert len({tuple(c.token_ids) for c in sampled[2]}) > 1  # each row its own draws
    with pytest.raises(ValueError, match="got 3 sample counts for 4 prefixes"):
        engine(model).generate(PREFIXES, counts[:3], params)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        engine(model).generate(PREFIXES, [1, 0, 1, 1], params)


def test_groups_pack_uneven_counts_into_the_batch(model: LlamaForCausalLM) -> None:
    """(prefix indices by length, samples of each, prefixes completed): a group holds at most batch_size rows, and
    a prefix asked for more is split over groups of its own; one count for all packs batch_size // n per group."""
    lengths = [[1] * n for n in (3, 7, 2, 5, 4)]  # sorted by length: prefixes 2, 0, 4, 3, 1
    assert engine(model, batch_size=6)._plan(lengths, [2, 3, 4, 9, 1]) == [
        ([2, 0], [4, 2], 2), ([4], [1], 1), ([3], [6], 0), ([3], [3], 1), ([1], [3], 1),
    ]
    assert engine(model, batch_size=6)._plan(lengths, [2] * 5) == [([2, 0, 4], [2, 2, 2], 3), ([3, 1], [2, 2], 2)]


def test_too_long_prefix_raises_a_clear_error(model: LlamaForCausalLM) -> None:
    eng = engine(model)
    assert eng.max_context == 128
    with pytest.raises(ValueError, match=r"prefix of 100 tokens \+ max_new_tokens=29 = 129 exceeds .*=128"):
        eng.generate([[1, 2], [1] * 100], 1, SamplingParams(max_new_tokens=29))
    with pytest.raises(ValueError, match="empty prefix"):
        eng.generate([[]], 1, SamplingParams(max_new_tokens=4))
    eng.generate([[1] * 100], 1, SamplingParams(max_new_tokens=28))  # exactly fits


@pytest.fixture
def forward_shapes(model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input_ids shape of every forward call the engine makes."""
    return recorded_forward_shapes(model, monkeypatch)


def recorded_forward_shapes(model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """A list that fills with the input_ids shape of every later forward call of `model`."""
    shapes: list[tuple[int, ...]] = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    return shapes


def test_prefix_is_computed_once_per_group(model: LlamaForCausalLM, forward_shapes: list[tuple[int, ...]]) -> None:
    model.train()
    progress: list[int] = []
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    engine(model, batch_size=12).generate(PREFIXES, 6, params, generator=seeded(6), on_progress=progress.append)

    assert model.training, "the previous train/eval mode is restored"
    model.eval()
    assert progress == [2, 2]
    prefix_passes = [shape for shape in forward_shapes if shape[1] > 1]
    assert prefix_passes == [(2, 3), (2, 7)]  # sorted by length: [1,4] + [1,5,6], then [1,12..15] + [1,7..3]
    assert all(shape == (12, 1) for shape in forward_shapes if shape[1] == 1)


def test_each_prefix_finds_a_root_that_begins_with_it() -> None:
    prefixes = [[1, 2], [1, 2, 3, 4], [1, 2, 3], (1, 5), [1, 2, 3, 6], [7], [1, 2], [1, 2, 3, 4]]
    roots = shared_prefix_roots(prefixes)
    assert [list(prefixes[roots[i]]) for i in (1, 3, 4, 5)] == [[1, 2, 3, 4], [1, 5], [1, 2, 3, 6], [7]]
    assert roots[7] == roots[1] and roots[6] == roots[0]  # identical prefixes share one root
    assert len(set(roots)) == 4  # [1, 2] and [1, 2, 3] take either of the two prefixes that extend them
    for i, root in enumerate(roots):
        assert list(prefixes[root][: len(prefixes[i])]) == list(prefixes[i])
        assert roots[root] == root and not any(  # a root is its own root, and no prefix extends it
            len(p) > len(prefixes[root]) and list(p[: len(prefixes[root])]) == list(prefixes[root]) for p in prefixes)
    assert shared_prefix_roots([[3], [1, 2], [2]]) == [0, 1, 2]


def step_states(model: PreTrainedModel) -> list[list[int]]:
    """VinePPO's states of two greedy responses: each prompt, then prompt + its response cut at 3, 7 and 12 tokens,
    and the second prompt once more; in a shuffled order."""
    (first,), (second,) = engine(model).generate(PREFIXES[:2], 1, SamplingParams(temperature=0.0, max_new_tokens=14))
    states = [prompt + completion.token_ids[:cut] for prompt, completion in ((PREFIXES[0], first), (PREFIXES[1], second))
              for cut in (0, 3, 7, 12)]
    return [states[i] for i in (5, 0, 7, 2, 1, 4, 6, 3)] + [PREFIXES[1]]


def test_shared_prefixes_give_what_separate_forward_passes_give(any_model: PreTrainedModel) -> None:
    """Prefixes cut from their roots' caches decode as those of one left-padded pass per group (greedy: the same
    tokens, log-probs within float error), for every grouping, and sampled log-probs are a full forward pass's."""
    states = step_states(any_model)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=9)
    budgets = [1 + 2 * i % 9 for i in range(len(states))]
    for batch_size in (2, 5, 64):  # 2 splits a prefix's 3 samples over groups
        shared = HFEngine(any_model, batch_size=batch_size, eos_token_id=EOS, pad_token_id=PAD)
        padded = HFEngine(any_model, batch_size=batch_size, eos_token_id=EOS, pad_token_id=PAD, share_prefixes=False)
        for a_samples, b_samples in zip(shared.generate(states, 3, greedy, budgets=budgets),
                                        padded.generate(states, 3, greedy, budgets=budgets)):
            for a, b in zip(a_samples, b_samples):
                assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)

    temperature = 0.7
    sampled = engine(any_model, batch_size=8).generate(states, 2, SamplingParams(temperature, max_new_tokens=9),
                                                       seeded(7), None, budgets)
    assert_full_forward_logprobs(any_model, states, sampled, temperature)


def test_shared_prefix_tokens_are_computed_once(model: LlamaForCausalLM, forward_shapes: list[tuple[int, ...]]) -> None:
    states = step_states(model)
    forward_shapes.clear()
    engine(model, batch_size=6).generate(states, 2, SamplingParams(temperature=1.0, max_new_tokens=1), seeded(8))
    roots = {tuple(states[r]) for r in shared_prefix_roots(states)}
    assert len(roots) == 2
    # one pass of the two roots (the longest states), then one of the last token of each group's 3 prefixes (the
    # 9 prefixes x 2 samples make 3 groups of 6 rows); one new token needs no decoding pass
    assert forward_shapes == [(2, max(map(len, roots))), (3, 1), (3, 1), (3, 1)]


def test_a_sliding_window_cache_takes_the_padded_path_without_a_root_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window's cache cannot be cut to a shorter prefix's: the engine must see that from the config, before it
    runs the roots through the model (it once ran them and then fell back, computing those tokens twice)."""
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, intermediate_size=128, max_position_embeddings=128, sliding_window=4)
    windowed = MistralForCausalLM(config).eval()
    states = step_states(windowed)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    shapes = recorded_forward_shapes(windowed, monkeypatch)
    runs = {}
    for share in (True, False):
        shapes.clear()
        windowed_engine = HFEngine(windowed, batch_size=6, eos_token_id=EOS, pad_token_id=PAD, share_prefixes=share)
        runs[share] = (windowed_engine.generate(states, 2, params), list(shapes))
    assert runs[True] == runs[False]  # the same completions from the same forward passes: no pass of the 2 roots


def test_engine_share_prefixes_reaches_the_engine(model: LlamaForCausalLM) -> None:
    tokenizer = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD, decode=CharTokenizer().decode)
    for value in (True, False):
        cfg = load_config(None, [f"engine.share_prefixes={str(value).lower()}"])
        assert build_engine(cfg, model, tokenizer, "tiny").share_prefixes is value


def test_decoding_stops_when_every_row_has_finished(
    model: LlamaForCausalLM, forward_shapes: list[tuple[int, ...]]
) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    (reference,) = engine(model).generate([PREFIXES[0]], 1, params)[0]
    r = reference.token_ids
    k = next(i for i in range(1, len(r)) if r[i] not in r[:i])  # the greedy response's first new token after r[0]
    forward_shapes.clear()

    eng = HFEngine(model, batch_size=4, eos_token_id=r[k], pad_token_id=PAD)  # make r[k] the eos
    (samples,) = eng.generate([PREFIXES[0]], 4, params)
    assert all(c.token_ids == r[: k + 1] and c.finish_reason == "stop" for c in samples)
    assert forward_shapes == [(1, 3)] + [(4, 1)] * k  # the prefix, then tokens 1..k; none after the eos


def test_finished_rows_are_dropped_without_changing_the_results(
    model: LlamaForCausalLM, forward_shapes: list[tuple[int, ...]]
) -> None:
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    budgets = [1, 2, 12, 12]  # 8 rows: 2 finish after one token, 2 more after two
    alone = [engine(model).generate([p], 2, greedy, budgets=[b])[0] for p, b in zip(PREFIXES, budgets)]
    forward_shapes.clear()
    together = engine(model).generate(PREFIXES, 2, greedy, budgets=budgets)
    decode_rows = [shape[0] for shape in forward_shapes if shape[1] == 1]
    assert decode_rows[0] <= 6 and decode_rows == sorted(decode_rows, reverse=True)  # finished rows were dropped
    for alone_samples, together_samples in zip(alone, together):
        for a, b in zip(alone_samples, together_samples):
            assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)

    temperature = 0.7  # sampled rows keep their own cache rows through the drops: log-probs of a full forward
    sampled = engine(model).generate(PREFIXES, 2, SamplingParams(temperature, max_new_tokens=12), seeded(3), None,
                                     budgets)
    assert all(len(c.token_ids) <= budget for samples, budget in zip(sampled, budgets) for c in samples)
    assert_full_forward_logprobs(model, PREFIXES, sampled, temperature)


class CharTokenizer:
    """Token i decodes to the i-th letter; enough for the engine's stop strings."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in ids)


def test_a_stop_string_ends_a_completion_like_eos(model: LlamaForCausalLM) -> None:
    tokenizer = CharTokenizer()
    plain = SamplingParams(temperature=0.0, max_new_tokens=12)
    with_tokenizer = HFEngine(model, tokenizer, eos_token_id=EOS, pad_token_id=PAD)
    free = with_tokenizer.generate(PREFIXES, 1, plain)
    long_ones = [samples[0] for samples in free if len(samples[0].token_ids) >= 5]
    stop = tokenizer.decode(long_ones[0].token_ids[2:4])
    stopped = with_tokenizer.generate(PREFIXES, 1, SamplingParams(0.0, 1.0, 12, stop=(stop,)))
    for (a,), (b,) in zip(free, stopped):
        text = tokenizer.decode(a.token_ids)
        if stop in text:
            # generation ends at the token completing the stop string; recorded without it, eos appended
            cut = text.find(stop)  # one character per token here
            assert b.token_ids == a.token_ids[:cut] + [EOS] and b.finish_reason == "stop"
            assert b.logprobs == pytest.approx(a.logprobs[:cut] + [0.0])
        else:
            assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
    assert any(stop in tokenizer.decode(a.token_ids) for (a,) in free)
    with pytest.raises(ValueError, match="stop strings need the engine's tokenizer"):
        engine(model).generate(PREFIXES[:1], 1, SamplingParams(0.0, 1.0, 4, stop=("x",)))


@pytest.mark.parametrize("sharpness", [0.1, 3.0, 8.0])  # flat (drawn over the whole vocabulary) to peaked
def test_top_p_draws_follow_the_nucleus_distribution(sharpness: float) -> None:
    """Whether the draw is made among the top candidates (peaked rows) or over the whole vocabulary (flat ones),
    every token of the nucleus, and none outside it, comes up with its renormalised probability."""
    from vineppo.engine.hf import _sample_top_p

    scaled = sharpness * torch.randn(1, 1000, generator=torch.Generator().manual_seed(0))
    draws = 20000
    rows = scaled.expand(draws, -1)
    for top_p in (0.5, 0.9):
        sorted_probs, order = torch.softmax(scaled[0], -1).sort(descending=True)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p  # the reference: a sort of the whole vocabulary
        expected = torch.zeros(1000).scatter_(-1, order, sorted_probs * keep)
        expected /= expected.sum()
        tokens = _sample_top_p(rows, torch.logsumexp(rows, -1, keepdim=True), top_p, seeded(1))
        frequency = torch.bincount(tokens, minlength=1000).float() / draws
        assert (frequency[expected == 0] == 0).all()
        assert ((frequency - expected).abs() <= 5 * (expected * (1 - expected) / draws).sqrt() + 1e-4).all()


def test_a_cache_grown_in_place_gives_the_same_logits_as_one_grown_by_concatenation(model: LlamaForCausalLM) -> None:
    from transformers import DynamicCache

    from vineppo.engine.hf import _InPlaceLayer, grow_in_place

    prefix, steps = torch.tensor([[1, 5, 6, 7]]), [[8], [9], [10]]
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    for cache in caches:
        model(input_ids=prefix, use_cache=True, **{engine(model)._cache_kwarg: cache})
    grow_in_place(caches[1], capacity=prefix.shape[1] + len(steps))
    assert all(isinstance(layer.update.__self__, _InPlaceLayer) for layer in caches[1].layers)
    for position, token in enumerate(steps, start=prefix.shape[1]):
        logits = [
            model(input_ids=torch.tensor([token]), position_ids=torch.tensor([[position]]), use_cache=True,
                  **{engine(model)._cache_kwarg: cache}).logits
            for cache in caches
        ]
        assert torch.allclose(logits[0], logits[1], atol=1e-6)
    assert caches[1].get_seq_length() == prefix.shape[1] + len(steps)
