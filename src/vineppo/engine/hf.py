"""A sampling engine on plain transformers: any causal LM, CPU or GPU, with every prefix token computed once.

VinePPO asks for K continuations of many (prompt + partial response) prefixes. `model.generate` would run every
prefix K times through the model; here each group of prefixes gets one forward pass, and its KV cache is repeated K
times before decoding, so only the new tokens cost K-fold. The prefixes of one response's steps are prefixes of one
another: their tokens are computed once, in a forward pass of the longest, and each prefix's cache is cut from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from vineppo.engine.base import (
    Completion, ProgressCallback, SamplingParams, checked_budgets, end_at_stop_string, sample_counts,
)
from vineppo.steps import TokenTexts


class HFEngine:
    """Samples continuations of token prefixes with a custom KV-cached decoding loop (no `model.generate`).

    Log-probs are those of `log_softmax(logits / T)` (T = 1 for greedy), taken BEFORE top-p truncation: the quantity
    the trainer's forward pass recomputes. Sampling itself uses the top-p-truncated distribution, so with top_p < 1
    the recorded log-prob of a token is lower than the log-prob of the distribution it was actually drawn from.

    Rows are grouped so that the samples of the prefixes in a group add up to at most `batch_size`; a prefix asked
    for more than `batch_size` samples has them split over several groups. Results with a fixed `torch.Generator` are
    reproducible for the same inputs and batch size (the grouping decides which random numbers go to which row).

    With `share_prefixes` (the default), when some prefix begins another one, each prefix that no other extends (a
    root) is run through the model once and every prefix takes its cache from its root's (`shared_prefix_roots`);
    VinePPO's states then cost their response's tokens once instead of once per state (docs/performance.md). The
    roots' caches are held for the whole call. False gives every group its own left-padded forward pass.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 64,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        share_prefixes: bool = True,
    ) -> None:
        """eos_token_id / pad_token_id default to the tokenizer's; pad falls back to eos (it is only ever masked)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            raise ValueError("HFEngine needs an eos_token_id: pass it or a tokenizer that defines one")
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        self.model = model
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes
        # A sliding window's (or a layer sharing another's) cache cannot be cut to a shorter prefix's: such models
        # take the padded path. Read from the config once, before any pass.
        self._caches_can_be_cut = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        # transformers 5.2x renamed `past_key_values` to `cache`; accept both generations of the API.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else eos_token_id)
        self.token_texts = TokenTexts(lambda ids: tokenizer.decode(ids, skip_special_tokens=True)) if tokenizer else None

    def sync_weights(self) -> None:
        """Nothing to copy: this engine runs the policy module itself."""

    @property
    def max_context(self) -> int | None:
        """The longest prefix + completion the model's positions allow (None if the config does not say)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int | Sequence[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
        on_progress: ProgressCallback | None = None,
        budgets: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` continuations of every prefix (or `n[i]` of prefix i); result[i][j] is the j-th continuation
        of prefixes[i].

        `generator` must live on the model's device (torch.multinomial requires it).
        """
        counts = sample_counts(prefixes, n)
        budgets = checked_budgets(prefixes, params, budgets, self.max_context, "the model's max_position_embeddings")
        results: list[list[Completion]] = [[] for _ in prefixes]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                roots = self._root_caches(prefixes) if self.share_prefixes and self._caches_can_be_cut else None
                for indices, repeats, finished in self._plan(prefixes, counts):
                    group = [prefixes[i] for i in indices]
                    if roots is None:
                        prefill = self._padded_prefill(group)
                    else:
                        prefill = self._prefill_from_roots(group, [roots.row[i] for i in indices], roots.layers)
                    completions = iter(self._generate_group(
                        prefill, [budgets[i] for i in indices], repeats, params, generator
                    ))
                    for i, repeat in zip(indices, repeats):
                        results[i].extend(next(completions) for _ in range(repeat))
                    if on_progress is not None:
                        on_progress(finished)
        finally:
            self.model.train(was_training)
        return results

    def _plan(self, prefixes: Sequence[Sequence[int]], counts: Sequence[int]) -> list[tuple[list[int], list[int], int]]:
        """Groups as (prefix indices, samples of each, prefixes completed by this group), sorted by length.

        Sorting puts prefixes of similar length together, so left padding wastes little compute. Prefixes join a
        group while its samples fit in `batch_size` rows; one asked for more samples than rows has them split over
        groups of its own (its forward pass is then repeated per group).
        """
        groups: list[tuple[list[int], list[int], int]] = []
        indices: list[int] = []
        repeats: list[int] = []
        for i in sorted(range(len(prefixes)), key=lambda i: len(prefixes[i])):
            if indices and (sum(repeats) + counts[i] > self.batch_size or counts[i] > self.batch_size):
                groups.append((indices, repeats, len(indices)))
                indices, repeats = [], []
            if counts[i] <= self.batch_size:
                indices.append(i)
                repeats.append(counts[i])
                continue
            groups.extend(([i], [min(self.batch_size, counts[i] - s)], int(s + self.batch_size >= counts[i]))
                          for s in range(0, counts[i], self.batch_size))
        if indices:
            groups.append((indices, repeats, len(indices)))
        return groups

    def _root_caches(self, prefixes: Sequence[Sequence[int]]) -> _RootCaches | None:
        """Every layer's keys and values of the roots (`shared_prefix_roots`), one forward pass per `batch_size` of
        them, right-padded (causal attention leaves a token's keys untouched by the padding after it). None when no
        prefix begins another."""
        root_of = shared_prefix_roots(prefixes)
        if all(root == i for i, root in enumerate(root_of)):
            return None
        roots = sorted(set(root_of))
        width = max(len(prefixes[r]) for r in roots)
        device = self.model.device
        batches = []
        for start in range(0, len(roots), self.batch_size):
            sequences = [prefixes[r] for r in roots[start : start + self.batch_size]]
            input_ids, attention_mask = self._padded(sequences, width, left=False)
            cache = DynamicCache(config=self.model.config)
            self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=torch.arange(width, device=device).expand(len(sequences), -1),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
            batches.append([(layer.keys, layer.values) for layer in cache.layers])
        row = {root: j for j, root in enumerate(roots)}
        layers = [tuple(torch.cat([batch[i][kv] for batch in batches]) for kv in (0, 1)) for i in range(len(batches[0]))]
        return _RootCaches([row[root] for root in root_of], layers)

    def _prefill_from_roots(
        self, prefixes: list[Sequence[int]], rows: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> _Prefill:
        """The group's cache cut from its roots' (`rows`: each prefix's root row), left-padded; then one forward pass
        of every prefix's last token gives its next-token logits."""
        device = self.model.device
        lengths = torch.tensor([len(p) for p in prefixes], device=device)
        cached = int(lengths.max()) - 1
        if cached == 0:
            return self._padded_prefill(prefixes)
        positions = torch.arange(cached, device=device)[None, :] - (cached - (lengths - 1))[:, None]
        source = torch.tensor(rows, device=device)[:, None]
        index = positions.clamp(min=0)  # the padding slots read position 0; the mask hides them
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(layers):
            cache.update(keys[source, :, index].transpose(1, 2), values[source, :, index].transpose(1, 2), layer)
        ones = torch.ones((len(prefixes), 1), dtype=torch.long, device=device)
        attention_mask = torch.cat([(positions >= 0).long(), ones], dim=1)
        last_position = (lengths - 1)[:, None]
        out = self.model(
            input_ids=torch.tensor([p[-1] for p in prefixes], dtype=torch.long, device=device)[:, None],
            attention_mask=attention_mask,
            position_ids=last_position,
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        return _Prefill(cache, out.logits[:, -1].float(), attention_mask, last_position)

    def _padded_prefill(self, prefixes: list[Sequence[int]]) -> _Prefill:
        """The group's prefixes left-padded to the longest, in one forward pass."""
        device = self.model.device
        input_ids, attention_mask = self._padded(prefixes, max(len(p) for p in prefixes), left=True)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        return _Prefill(cache, out.logits[:, -1].float(), attention_mask, position_ids[:, -1:])

    def _padded(self, sequences: list[Sequence[int]], width: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids padded to `width` on the left (a group's prefixes, whose last tokens line up) or on the right
        (the roots, whose positions start at 0), and the attention mask of the real tokens."""
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            cols = slice(width - len(sequence), width) if left else slice(0, len(sequence))
            input_ids[row, cols] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, cols] = 1
        return input_ids, attention_mask

    def _generate_group(
        self,
        prefill: _Prefill,
        budgets: list[int],
        repeats: list[int],
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> list[Completion]:
        """Decode `repeats[i]` samples of the group's prefix i; returns them prefix-major (all samples of prefix 0
        first)."""
        device = self.model.device
        # The shared prefix: every row's cache, mask and last logits repeated per sample.
        sample_rows = torch.repeat_interleave(torch.arange(len(repeats)), torch.tensor(repeats)).to(device)
        cache = prefill.cache
        cache.batch_select_indices(sample_rows)
        logits = prefill.logits[sample_rows]
        attention_mask = prefill.attention_mask[sample_rows]
        position_ids = prefill.last_position[sample_rows]

        rows, max_new = logits.shape[0], max(budgets)
        grow_in_place(cache, attention_mask.shape[1] + max_new)
        temperature = 1.0 if params.greedy else params.temperature
        # Finished rows keep decoding with the others, their `lengths` entry frozen at their eos or budget so that
        # whatever they produce afterwards is cut off, until a quarter of the batch has finished: then the batch
        # (cache, mask, positions) is cut down to the rows still going. `active` maps batch rows to result rows.
        tokens = torch.zeros((rows, max_new), dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, max_new), device=device)
        limits = torch.tensor(budgets, dtype=torch.long, device=device)[sample_rows]
        lengths = limits.clone()
        at_eos = torch.zeros(rows, dtype=torch.bool, device=device)
        active = torch.arange(rows, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row
        steps = 0
        stop_texts = None
        if params.stop:
            if self.token_texts is None:
                raise ValueError("stop strings need the engine's tokenizer (HFEngine(model, tokenizer, ...))")
            stop_texts = StopStrings(params.stop, self.token_texts, rows, device)
        for t in range(max_new):
            scaled = logits / temperature
            log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
            if params.greedy:
                next_tokens = scaled.argmax(dim=-1)
            else:
                next_tokens = _sample_top_p(scaled, log_norm, params.top_p, generator)
            tokens[active, t] = next_tokens
            logprobs[active, t] = (scaled.gather(1, next_tokens[:, None]) - log_norm).squeeze(1)
            stopped = ~done & (next_tokens == self.eos_token_id)
            if stop_texts is not None:
                stopped |= ~done & stop_texts.append(active.tolist(), next_tokens.tolist())
            lengths[active] = torch.where(stopped, t + 1, lengths[active])
            at_eos[active] |= stopped
            done |= stopped | (limits[active] <= t + 1)
            steps = t + 1
            finished = int(done.sum())
            if t == max_new - 1 or finished == len(done):
                break
            if 4 * finished >= len(done):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                attention_mask, position_ids, next_tokens = attention_mask[keep], position_ids[keep], next_tokens[keep]
                active, done = active[keep], done[keep]
            ones = torch.ones((len(active), 1), dtype=attention_mask.dtype, device=device)
            attention_mask = torch.cat([attention_mask, ones], dim=1)
            position_ids = position_ids + 1
            logits = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_kwarg: cache},
            ).logits[:, -1].float()

        token_rows = tokens[:, :steps].tolist()
        logprob_rows = logprobs[:, :steps].tolist()
        stop_rows = at_eos.tolist()
        completions = [
            Completion(token_rows[r][:length], logprob_rows[r][:length], "stop" if stop_rows[r] else "length")
            for r, length in enumerate(lengths.tolist())
        ]
        if stop_texts is None:
            return completions
        return [end_at_stop_string(c, params.stop, self.token_texts, self.eos_token_id) for c in completions]


class _Prefill(NamedTuple):
    """A group's prefixes after their forward pass: the KV cache, each prefix's next-token logits, its attention
    mask (left-padded to the group's longest prefix) and the position of its last token."""

    cache: DynamicCache
    logits: torch.Tensor
    attention_mask: torch.Tensor
    last_position: torch.Tensor


class _RootCaches(NamedTuple):
    """The roots' keys and values, (roots, heads, longest root, head dim) per layer, and each prefix's root row."""

    row: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


def shared_prefix_roots(prefixes: Sequence[Sequence[int]]) -> list[int]:
    """For each prefix, the index of a prefix that begins with it and that no other prefix extends (its root; itself
    when no other prefix begins with it). Identical prefixes share one root.

    In lexicographic order the prefixes that begin with p follow p as one run, so walking the order backwards, p
    begins with the latest root seen or with none of the prefixes after it."""
    sequences = [list(p) for p in prefixes]
    order = sorted(range(len(sequences)), key=sequences.__getitem__)
    root_of = list(range(len(sequences)))
    root = None
    for i in reversed(order):
        if root is not None and sequences[root][: len(sequences[i])] == sequences[i]:
            root_of[i] = root_of[root]
        else:
            root = i
    return root_of


class _InPlaceLayer:
    """Takes over a DynamicLayer's `update`: new keys and values are written into buffers sized for the whole
    decode instead of concatenated (which copies the whole cache at every token: 44% of the engine's time on the
    tiny model, docs/performance.md). The layer's `keys` / `values` stay views of the filled part, so everything
    else that reads them (sequence length, mask sizes) is unchanged."""

    def __init__(self, layer, capacity: int):
        self.layer = layer
        self.length = layer.keys.shape[-2]
        shape = (*layer.keys.shape[:-2], capacity, layer.keys.shape[-1])
        self.keys = layer.keys.new_empty(shape)
        self.values = layer.values.new_empty(shape)
        self.keys[..., : self.length, :] = layer.keys
        self.values[..., : self.length, :] = layer.values
        layer.keys, layer.values = self.keys[..., : self.length, :], self.values[..., : self.length, :]
        layer.update = self.update
        layer.batch_select_indices = self.batch_select_indices

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.keys[..., self.length : end, :] = key_states
        self.values[..., self.length : end, :] = value_states
        self.length = end
        self.layer.keys, self.layer.values = self.keys[..., :end, :], self.values[..., :end, :]
        return self.layer.keys, self.layer.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices` (rows that finished decoding are dropped)."""
        self.keys, self.values = self.keys[indices], self.values[indices]
        self.layer.keys, self.layer.values = self.keys[..., : self.length, :], self.values[..., : self.length, :]


def grow_in_place(cache: DynamicCache, capacity: int) -> None:
    """Preallocate every layer of a filled DynamicCache for `capacity` positions. Layers of any other kind (or a
    transformers without cache layers) are left to grow as they do."""
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer and getattr(layer, "is_initialized", False):
            _InPlaceLayer(layer, capacity)


class StopStrings:
    """Watches each row's generated text for any of the stop strings. Only the text's last characters are kept
    (as many as the longest stop string), from the cached text of single tokens."""

    def __init__(self, stops: Sequence[str], token_texts: TokenTexts, rows: int, device: torch.device):
        self.stops, self.token_texts, self.device = tuple(stops), token_texts, device
        self.keep = max(len(stop) for stop in self.stops)
        self.tails = [""] * rows

    def append(self, rows: list[int], tokens: list[int]) -> torch.Tensor:
        """Add one token to each of `rows`; True for the rows whose text now holds a stop string."""
        hit = []
        for row, text in zip(rows, self.token_texts(tokens)):
            tail = self.tails[row] + text
            hit.append(any(stop in tail for stop in self.stops))
            self.tails[row] = tail[-self.keep :]
        return torch.tensor(hit, dtype=torch.bool, device=self.device)


NUCLEUS_CANDIDATES = 256


def _sample_top_p(
    scaled: torch.Tensor, log_norm: torch.Tensor, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row drawn from softmax(scaled) (`log_norm`: the rows' logsumexp) cut to its top-p nucleus.

    The nucleus usually lies among a few hundred tokens: when the top candidates already hold top_p of the mass in
    every row, the draw is made among them alone, which is the same distribution as over the whole vocabulary (49k
    for SmolLM2) without a full-vocabulary exp, scatter and multinomial per decoded token.
    """
    candidates = min(scaled.shape[-1], NUCLEUS_CANDIDATES)
    if top_p < 1.0 and candidates < scaled.shape[-1]:
        top_scaled, top_idx = scaled.topk(candidates, dim=-1)
        top_probs = (top_scaled - log_norm).exp()
        if bool((top_probs.sum(-1) >= top_p).all()):
            mass_before = top_probs.cumsum(dim=-1) - top_probs
            choice = torch.multinomial(top_probs.masked_fill(mass_before >= top_p, 0.0), 1, generator=generator)
            return top_idx.gather(1, choice).squeeze(1)
    probs = _top_p_filter((scaled - log_norm).exp(), top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tokens outside the nucleus: the smallest set, by descending probability, whose mass reaches top_p.

    A token is kept when the mass ranked strictly before it is below top_p, so the most likely token always stays.
    The result is unnormalised; torch.multinomial does not need normalised weights.
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
