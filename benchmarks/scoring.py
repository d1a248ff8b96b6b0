"""Score-phase cost: the generative verifier and the judge's four criteria, with and without the
shared-prefix cache (pns_mini/scorers.py, SharedPrefixScorer), measured in one run.

For the same (question, completion) pairs it times
  (a) verifier   one verifier pass alone: RewardModelScorer(model, tok).raw, one full row each
  (b) unshared   the old way: build_scorers(..., share_prefix=False), rm then judge: the verifier
                 and the 4 criterion prompts, each row run in full (5 full rows per completion)
  (c) shared     build_scorers(...) as the scripts use it, rm then judge: the head (template,
                 problem, solution) prefilled once per completion, the 5 short tails on copies
                 of its cache; the judge's call is served from the reward model's
alternated over --repeats (the order rotates each repeat), fresh scorers each time, medians of
wall and CPU seconds (time.process_time: on a shared 2-core machine wall time also measures
waiting for a core); ratios against (a). Goal: (c)/(a) <= ~1.5.

Two shapes: "reference" (the offline reference solutions, ~65 tokens) and "long" (each pair's
completion = 4 reference solutions joined, ~260 tokens, standing in for a GRPO rollout of up to
max_completion_length 512). The shared part grows with the completion, the tails do not, so the
ratio falls with completion length: (c)/(a) ~ (Lp + 5 T) / (Lp + T_verifier).

    python benchmarks/scoring.py                 # embedded SmolLM2-135M, 8 pairs, both shapes
    python benchmarks/scoring.py --repeats 3 --shapes reference
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pns_mini.data import load_problems  # noqa: E402
from pns_mini.modeling import load_model_and_tokenizer  # noqa: E402
from pns_mini.scorers import RewardModelScorer, SharedPrefixScorer, build_scorers, shared_length  # noqa: E402


def verifier_alone(model, tok, questions, completions, batch_size):
    RewardModelScorer(model, tok, batch_size=batch_size).raw(questions, completions)


def verifier_and_judge(model, tok, questions, completions, batch_size, share_prefix):
    rm, judge = build_scorers(model, tok, reward_model=None, judge_model=None, base_model_name="unused",
                              batch_size=batch_size, share_prefix=share_prefix)
    rm.raw(questions, completions)  # as synthesize.py / train_generator.py: the reward model, then the judge
    judge(questions, completions)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-completions", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward (scorer_batch_size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", default="reference,long")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()

    model, tok = load_model_and_tokenizer(args.model, dtype=args.dtype)
    problems = load_problems("offline", limit=args.num_completions + 3)
    n = args.num_completions
    questions = [row["question"] for row in problems[:n]]
    shapes = {"reference": [row["solution"] for row in problems[:n]],
              "long": ["\n\n".join(row["solution"] for row in problems[i:i + 4]) for i in range(n)]}
    print(f"model={args.model} device={next(model.parameters()).device} dtype={next(model.parameters()).dtype} "
          f"pairs={n} batch_size={args.batch_size} repeats={args.repeats} threads={torch.get_num_threads()}")

    for shape in args.shapes.split(","):
        completions = shapes[shape]
        rows = [SharedPrefixScorer(model, tok).rows(q, c) for q, c in zip(questions, completions)]
        shared = statistics.mean(shared_length(r) for r in rows)
        tails = [statistics.mean(len(r[j]) - shared_length(r) for r in rows) for j in range(len(rows[0]))]
        print(f"\n[{shape}] mean tokens: shared head {shared:.0f}, tails {', '.join(f'{t:.0f}' for t in tails)} "
              f"(verifier, 4 criteria)")
        runs = {"(a) verifier": lambda: verifier_alone(model, tok, questions, completions, args.batch_size),
                "(b) unshared": lambda: verifier_and_judge(model, tok, questions, completions, args.batch_size, False),
                "(c) shared": lambda: verifier_and_judge(model, tok, questions, completions, args.batch_size, True)}
        for fn in runs.values():  # warm-up
            fn()
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.repeats):  # rotate the order so that drifting load hits every side alike
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(timed(runs[name]))
        base_wall = statistics.median(w for w, _ in times["(a) verifier"])
        base_cpu = statistics.median(c for _, c in times["(a) verifier"])
        header = f"{'':<14} {'wall s':>8} {'/ (a)':>7} {'CPU s':>8} {'/ (a)':>7}"
        print(header)
        print("-" * len(header))
        for name, values in times.items():
            wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
            print(f"{name:<14} {wall:>8.2f} {wall / base_wall:>6.2f}x {cpu:>8.2f} {cpu / base_cpu:>6.2f}x")


if __name__ == "__main__":
    main()
