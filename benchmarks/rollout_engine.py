"""VinePPO's MC-rollout workload through three decoders, side by side in one run.

The workload is one quickstart iteration's value estimation: the policy samples `--prompts` x `--samples`
responses, they are cut into steps, and every distinct step prefix asks for K continuations (each capped at
max_new_tokens minus the response tokens already in the prefix, as in training). Timed on it:

  (a) naive    one `model.generate` per prefix with num_return_sequences=K (the prefix is recomputed K times)
  (b) engine   vineppo's HFEngine with `share_prefixes=False`: prefixes batched by length, one left-padded forward
               per group (each prefix computed once), its KV cache expanded to the prefix's K samples
  (c) ceiling  the bare model: the same groups, one prefix forward and the same one-token KV-cached forwards as
               (b) ran, with as many rows each (the engine drops finished rows), with no sampling or bookkeeping
  (d) shared   HFEngine as the trainer runs it (`share_prefixes=True`): the same groups and decoding as (b), but
               the states of one response are cut from one forward pass of its longest state (each token once)

It prints generated tokens/s of each, the ratios (b)/(a), (b)/(c) and (d)/(b), and the process's peak RSS. With
`--uneven` it times instead uneven rollout counts (as `k_allocation: group_spread` and `reuse_samples` ask for:
here each prefix's count drawn uniformly from 1..2K-1, seeded) through the engine, as one call with per-prefix
counts against one call per distinct count (as the trainer made them before), and prints the ratio.

    python benchmarks/rollout_engine.py [--config configs/forks.yaml] [--k 3 9] [--prompts 32] [--samples 4]
        [--repeats 3] [--profile] [--uneven] [key=value ...]

The model and task are the config's (default: the quickstart's SFT tiny model on arithmetic); for SmolLM2-135M on
GSM8K, e.g.:

    python benchmarks/rollout_engine.py --prompts 2 --samples 2 --repeats 1 model.path=smollm2-135m-instruct \
        task.name=gsm8k task.gsm8k.prompt_format=chat task.gsm8k.train_source=../shared/data/gsm8k/train.jsonl \
        task.gsm8k.test_source=../shared/data/gsm8k/test.jsonl engine.max_new_tokens=64 engine.batch_size=64
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import DynamicCache

from vineppo.config import load_config
from vineppo.engine.base import SamplingParams
from vineppo.engine.hf import HFEngine, grow_in_place
from vineppo.model_sources import resolve_model_source
from vineppo.models import chat_template_of, load_model, load_tokenizer
from vineppo.sft import ensure_sft_model
from vineppo.steps import TokenTexts, split_steps
from vineppo.tasks import build_task


def step_prefixes(engine, tokenizer, task, params, prompts: int, samples: int) -> tuple[list[list[int]], list[int]]:
    """The distinct step prefixes of one iteration's responses, and each one's token budget."""
    problems = task.train_problems()[:prompts]
    prompt_ids = [tokenizer(p.prompt).input_ids for p in problems]
    groups = engine.generate(prompt_ids, samples, params, generator=torch.Generator().manual_seed(0))
    texts = TokenTexts(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    budgets: dict[tuple[int, ...], int] = {}
    for prompt, group in zip(prompt_ids, groups):
        for completion in group:
            for start in split_steps(texts(completion.token_ids)):
                budgets[tuple(prompt + completion.token_ids[:start])] = params.max_new_tokens - start
    return [list(p) for p in budgets], list(budgets.values())


def naive(model, tokenizer, prefixes, budgets, k, params) -> int:
    tokens = 0
    for prefix, budget in zip(prefixes, budgets):
        out = model.generate(
            torch.tensor([prefix]), do_sample=True, temperature=params.temperature, top_p=params.top_p,
            max_new_tokens=budget, num_return_sequences=k, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
        )
        new = out[:, len(prefix):]
        tokens += int((new != tokenizer.pad_token_id).sum())
    return tokens


def forward_batches(model, run):
    """`run()`'s result, and the rows of every forward pass it made, one list per engine group (a group starts
    with its prefix pass, the only one of more than one token)."""
    groups: list[list[int]] = []

    def record(_module, _args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            groups.append([])
        groups[-1].append(ids.shape[0])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return groups, result


@torch.inference_mode()
def ceiling(model, engine, prefixes, k, batches: list[list[int]]) -> None:
    """For each of the engine's groups: the prefix forward, then one-token KV-cached forwards with the engine's row
    counts (`batches`, as `forward_batches` recorded them), nothing else."""
    for (indices, repeats, _), rows in zip(engine._plan(prefixes, [k] * len(prefixes)), batches):
        group = [prefixes[i] for i in indices]
        width = max(map(len, group))
        ids = torch.tensor([[engine.pad_token_id] * (width - len(p)) + p for p in group])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in group])[:, None]).long()
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **{engine._cache_kwarg: cache})
        sample_rows = torch.repeat_interleave(torch.arange(len(group)), torch.tensor(repeats))
        cache.batch_select_indices(sample_rows)
        grow_in_place(cache, width + len(rows))  # the same preallocated cache as the engine's
        mask = mask[sample_rows]
        positions = mask.sum(-1, keepdim=True)
        for count in rows[1:]:
            if count < mask.shape[0]:  # the engine dropped finished rows here
                keep = torch.arange(count)
                cache.batch_select_indices(keep)
                mask, positions = mask[keep], positions[keep]
            token = torch.zeros(count, 1, dtype=torch.long)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            model(input_ids=token, attention_mask=mask, position_ids=positions, use_cache=True,
                  **{engine._cache_kwarg: cache})
            positions = positions + 1


def uneven_counts(engine, prefixes, budgets, k, params, repeats: int) -> dict:
    """Seconds (best of `repeats`, interleaved) to sample uneven counts per prefix in one engine call and in one
    call per distinct count, and the tokens each generated."""
    draws = torch.randint(0, 2 * k - 1, (len(prefixes),), generator=torch.Generator().manual_seed(3))
    counts = [1 + int(c) for c in draws]

    def one_call() -> int:
        groups = engine.generate(prefixes, counts, params, generator=torch.Generator().manual_seed(1), budgets=budgets)
        return sum(len(c.token_ids) for group in groups for c in group)

    def per_count_calls() -> int:
        tokens = 0
        for count in sorted(set(counts)):
            chosen = [i for i, c in enumerate(counts) if c == count]
            groups = engine.generate([prefixes[i] for i in chosen], count, params,
                                     generator=torch.Generator().manual_seed(1), budgets=[budgets[i] for i in chosen])
            tokens += sum(len(c.token_ids) for group in groups for c in group)
        return tokens

    best, tokens = {}, {}
    for _ in range(repeats):
        for name, run in (("one_call", one_call), ("per_count_calls", per_count_calls)):
            started = time.perf_counter()
            tokens[name] = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    return {
        "k": k, "uneven_rollouts": sum(counts), "tokens": tokens,
        "seconds": {name: round(seconds, 2) for name, seconds in best.items()},
        "one_call_tokens_per_s_over_per_count_calls": round(
            (tokens["one_call"] / best["one_call"]) / (tokens["per_count_calls"] / best["per_count_calls"]), 2),
    }


def profile_engine(engine, prefixes, budgets, k, params, rows: int = 12) -> None:
    """The ops that take the most CPU time in one engine call, as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(prefixes, k, params, generator=torch.Generator().manual_seed(1), budgets=budgets)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a config file (default: the defaults), e.g. configs/forks.yaml")
    parser.add_argument("--k", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="also print where one engine call spends its time (torch.profiler, top ops)")
    parser.add_argument("--uneven", action="store_true",
                        help="time uneven counts per prefix instead: one engine call against one per distinct count")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.path=smollm2-135m-instruct")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    path = ensure_sft_model(cfg) if cfg.model.path == "tiny" else resolve_model_source(cfg.model.path)
    tokenizer = load_tokenizer(path)
    model = load_model(path).eval()
    engine = HFEngine(model, tokenizer, batch_size=cfg.engine.batch_size, share_prefixes=False)
    shared = HFEngine(model, tokenizer, batch_size=cfg.engine.batch_size)
    task = build_task(cfg.task, chat_template_of(tokenizer))
    params = SamplingParams(cfg.engine.temperature, cfg.engine.top_p, cfg.engine.max_new_tokens, task.stop_sequences)
    prefixes, budgets = step_prefixes(engine, tokenizer, task, params, args.prompts, args.samples)
    print(f"model {cfg.model.path} on {cfg.task.name}: {len(prefixes)} distinct step prefixes from {args.prompts} x "
          f"{args.samples} responses, torch threads {torch.get_num_threads()}")

    if args.profile:
        profile_engine(shared, prefixes, budgets, max(args.k), params)
    for k in args.k:
        if args.uneven:
            print(json.dumps(uneven_counts(shared, prefixes, budgets, k, params, args.repeats)))
            continue
        # (b), (c) and (d) are fast: the best of --repeats runs each, interleaved, so a busy moment hurts none alone.
        engine_s = ceiling_s = shared_s = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            shared_results = shared.generate(prefixes, k, params, generator=torch.Generator().manual_seed(1),
                                             budgets=budgets)
            shared_s = min(shared_s, time.perf_counter() - started)
            started = time.perf_counter()  # the hook that records the batch sizes costs microseconds per forward
            batches, results = forward_batches(model, lambda: engine.generate(
                prefixes, k, params, generator=torch.Generator().manual_seed(1), budgets=budgets))
            engine_s = min(engine_s, time.perf_counter() - started)
            started = time.perf_counter()
            ceiling(model, engine, prefixes, k, batches)
            ceiling_s = min(ceiling_s, time.perf_counter() - started)
        engine_tokens = sum(len(c.token_ids) for group in results for c in group)
        shared_tokens = sum(len(c.token_ids) for group in shared_results for c in group)

        torch.manual_seed(2)
        started = time.perf_counter()
        naive_tokens = naive(model, tokenizer, prefixes, budgets, k, params)
        naive_s = time.perf_counter() - started

        engine_tps, naive_tps = engine_tokens / engine_s, naive_tokens / naive_s
        ceiling_tps, shared_tps = engine_tokens / ceiling_s, shared_tokens / shared_s
        print(json.dumps({
            "k": k,
            "naive_tokens_per_s": round(naive_tps), "engine_tokens_per_s": round(engine_tps),
            "ceiling_tokens_per_s": round(ceiling_tps), "shared_tokens_per_s": round(shared_tps),
            "engine_over_naive": round(engine_tps / naive_tps, 2), "engine_over_ceiling": round(engine_tps / ceiling_tps, 2),
            "shared_over_engine": round(shared_tps / engine_tps, 2),
            "seconds": {"naive": round(naive_s, 2), "engine": round(engine_s, 2), "ceiling": round(ceiling_s, 2),
                        "shared": round(shared_s, 2)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }))


if __name__ == "__main__":
    main()
