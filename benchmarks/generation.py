"""Sampling throughput with and without the KV cache, measured in one run.

For each batch size, the same greedy generation (so both paths produce the same tokens) runs
with `use_cache=True` and `use_cache=False`, alternated over `--repeats`; the table gives the
median tokens/s of each and their ratio. Tokens counted are completion tokens inside the
completion mask (up to and including the first EOS).

    python benchmarks/generation.py                       # embedded SmolLM2-135M, batches 1, 8, 32
    python benchmarks/generation.py --batch-sizes 1,8 --max-new-tokens 32 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pns_mini.data import format_prompt, load_problems  # noqa: E402
from pns_mini.generation import sample  # noqa: E402
from pns_mini.modeling import load_model_and_tokenizer  # noqa: E402


def run(model, tok, prompts, max_new_tokens, use_cache):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = sample(model, tok, prompts, temperature=0, max_new_tokens=max_new_tokens, use_cache=use_cache)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return out.completion_mask.sum().item(), out.completion_ids.numel(), seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-in-4bit", action="store_true")
    args = p.parse_args()

    model, tok = load_model_and_tokenizer(args.model, dtype=args.dtype, load_in_4bit=args.load_in_4bit)
    device = next(model.parameters()).device
    questions = [row["question"] for row in load_problems("offline", limit=64)]
    print(f"model={args.model} device={device} dtype={next(model.parameters()).dtype} "
          f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}")
    sample(model, tok, [format_prompt(tok, questions[0])], temperature=0, max_new_tokens=4)  # warm-up
    header = f"{'batch':>5} | {'tok/s cached':>12} | {'tok/s no cache':>14} | {'ratio':>6} | {'slots/s cached':>14}"
    print(header)
    print("-" * len(header))
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [format_prompt(tok, q) for q in questions[:bs]]
        cached, uncached, slots = [], [], []
        for _ in range(args.repeats):  # alternate so drift in machine load hits both alike
            n, s_total, sec = run(model, tok, prompts, args.max_new_tokens, True)
            cached.append(n / sec)
            slots.append(s_total / sec)
            n2, _, sec2 = run(model, tok, prompts, args.max_new_tokens, False)
            assert n2 == n, "cached and uncached greedy produced different token counts"
            uncached.append(n2 / sec2)
        c, u = statistics.median(cached), statistics.median(uncached)
        print(f"{bs:>5} | {c:>12.1f} | {u:>14.1f} | {c / u:>5.2f}x | {statistics.median(slots):>14.1f}")


if __name__ == "__main__":
    main()
