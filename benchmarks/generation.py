"""Rollout throughput: our decode loop (`sample(engine="loop")`, the default) vs plain
transformers `generate` (`sample(engine="generate", merge_lora=False)`: the same prompts, rows,
new-token budget and distribution, its processors neutralised), measured in one run.

Three shapes, the ones the stages sample (one-shot prompt of ~183 tokens, offline problems):
  grpo       2 prompts x 4 samples, temperature 1, LoRA attached   (a stage-1 rollout)
  synthesis 12 prompts x 4 samples, temperature 1, LoRA attached   (one synthesis batch)
  eval      24 prompts x 1, greedy, no LoRA                         (one evaluation batch)
The LoRA is a fresh r16 adapter on the 7 projections with its B matrices set to small random
values (a trained adapter's cost, not peft's zero start; the samples then differ slightly from
the base model's). Each repeat runs both sides back to back, alternating which goes first, so
drift in machine load hits both alike; the table gives medians. Sampled rows differ between the
sides (different random streams), so lengths differ: the table prints the completion tokens
(inside the masks) and "tok/s" = those tokens / wall seconds, the rate of useful tokens.

    python benchmarks/generation.py                          # embedded SmolLM2-135M, 2 repeats, 160 tokens
    python benchmarks/generation.py --shapes grpo --repeats 1 --max-new-tokens 64
    python benchmarks/generation.py --profile grpo           # where the loop's time goes (torch profiler)
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

SHAPES = {  # name: (prompts, samples per prompt, temperature, LoRA)
    "grpo": (2, 4, 1.0, True),
    "synthesis": (12, 4, 1.0, True),
    "eval": (24, 1, 0.0, False),
}


def timed(model, tok, prompts, n, temperature, max_new_tokens, engine, seed):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = sample(model, tok, prompts, num_samples=n, temperature=temperature, max_new_tokens=max_new_tokens,
                 seed=seed, engine=engine, merge_lora=engine == "loop")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def with_lora(model_name, dtype, load_in_4bit):
    model, tok = load_model_and_tokenizer(model_name, dtype=dtype, load_in_4bit=load_in_4bit, lora_r=16, lora_alpha=32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 1e-3).to(p.dtype))
    return model, tok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--shapes", default="grpo,synthesis,eval")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument("--profile", metavar="SHAPE", help="profile one loop rollout of SHAPE instead of the table")
    args = p.parse_args()

    base, tok = load_model_and_tokenizer(args.model, dtype=args.dtype, load_in_4bit=args.load_in_4bit)
    lora, _ = with_lora(args.model, args.dtype, args.load_in_4bit)
    questions = [row["question"] for row in load_problems("offline", limit=64)]
    print(f"model={args.model} device={next(base.parameters()).device} dtype={next(base.parameters()).dtype} "
          f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}")
    sample(base, tok, [format_prompt(tok, questions[0])], temperature=0, max_new_tokens=4)  # warm-up

    if args.profile:
        P, n, temp, use_lora = SHAPES[args.profile]
        prompts = [format_prompt(tok, q) for q in questions[:P]]
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(lora if use_lora else base, tok, prompts, n, temp, args.max_new_tokens, "loop", 0)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return

    header = (f"{'shape':>9} | {'rows':>4} | {'ours s':>7} | {'generate s':>10} | {'ours tok':>8} | {'gen tok':>7} | "
              f"{'ours tok/s':>10} | {'gen tok/s':>9} | {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for name in args.shapes.split(","):
        P, n, temp, use_lora = SHAPES[name]
        model = lora if use_lora else base
        prompts = [format_prompt(tok, q) for q in questions[:P]]
        rec = {"loop": [], "generate": []}
        for r in range(args.repeats):
            for engine in (("loop", "generate") if r % 2 == 0 else ("generate", "loop")):
                out, sec = timed(model, tok, prompts, n, temp, args.max_new_tokens, engine, seed=r)
                rec[engine].append((out.completion_mask.sum().item(), sec))
            if temp == 0:  # greedy: both engines must agree
                a = sample(model, tok, prompts[:4], temperature=0, max_new_tokens=args.max_new_tokens)
                b = sample(model, tok, prompts[:4], temperature=0, max_new_tokens=args.max_new_tokens, engine="generate")
                same = (a.completion_ids * a.completion_mask == b.completion_ids * b.completion_mask).all().item() \
                    if a.completion_ids.shape == b.completion_ids.shape else False
                assert same or r > 0, "greedy loop and generate disagree"
        med = {e: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v)) for e, v in rec.items()}
        rate = {e: statistics.median(t / s for t, s in v) for e, v in rec.items()}
        print(f"{name:>9} | {P * n:>4} | {med['loop'][1]:>7.1f} | {med['generate'][1]:>10.1f} | {med['loop'][0]:>8.0f} | "
              f"{med['generate'][0]:>7.0f} | {rate['loop']:>10.1f} | {rate['generate']:>9.1f} | "
              f"{rate['loop'] / rate['generate']:>7.2f}x")


if __name__ == "__main__":
    main()
