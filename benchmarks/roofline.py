"""How close the update phase gets to this machine's matmul rate: achieved FLOP/s of the GRPO
and DPO updates (and, for scale, of sampling) as a fraction of a measured fp32 torch.matmul rate.

Peak: median rate of `torch.matmul` on two n x n fp32 matrices (2 n^3 FLOPs each), measured
before and after the phases (the machine is shared: the rate drifts with its load).

Phases, timed with the exact calls our scripts make (pns_mini.modeling.token_logprobs,
losses.grpo_loss / dpo_loss, reference_model = adapter off, AdamW over the LoRA weights):
    GRPO update  N = prompts x num_generations rows of (prompt + completion) tokens
    DPO update   2B rows (chosen + rejected) of up to --dpo-length tokens
    sampling     generation.sample of the GRPO rows (KV cache): memory-bound, shown for scale
Token ids are random: the FLOPs do not depend on their values.

FLOPs counted (dense matmuls only; stated so that the numbers can be checked):
    Nb = parameters of the transformer blocks' linear layers (the frozen base; LoRA adds r(d_in +
         d_out) per projection, counted too), d = hidden size, V = vocabulary,
    S = rows x sequence length (every position, padding included: it is computed),
    K = rows x logit positions (token_logprobs keeps T+1 per row: `logits_to_keep`).
    forward  F = 2 Nb S + 2 d V K
    backward through a frozen base = activation gradients only, one matmul per weight as in the
         forward: ~F (the weight gradients of LoRA are negligible), so forward + backward ~ 2F
         = 4 Nb S + 4 d V K, the "4 N tokens" rule of LoRA training (6 N with weight gradients).
    gradient checkpointing recomputes the blocks' forward in backward: + 2 Nb S.
    update = reference forward F + policy forward F + backward F (+ recompute 2 Nb S).
    sampling ~ 2 Nb S_prefill + 2 (Nb + d V) x generated tokens (the KV cache saves the rest).
Not counted: attention scores and their softmax (QK^T and AV: 4 x layers x d x L' per token,
L' the number of earlier positions: at most ~8% of 2 Nb for SmolLM2-135M at L = 247, ~4% on
average under the causal mask), norms, activations, the loss. So the fractions are slight
underestimates of the work done.

Measured here (2-core CPU, load average ~1, SmolLM2-135M, --repeats 2, gradient checkpointing
on; the matmul rate itself moved between 162 and 251 GFLOP/s with the machine's load):

    phase                               tokens    GFLOP       s  GFLOP/s  % peak
    GRPO ref forward (no grad)            1976    468.3    3.53    132.8    64%
    GRPO policy forward                   1976    468.3    3.87    121.0    59%
    GRPO backward (+recompute)            1976    907.2    8.23    110.2    53%
    GRPO update total                     1976   1843.9   15.68    117.6    57%
    DPO ref forward (no grad)             2048    487.0    2.97    163.8    79%
    DPO policy forward                    2048    487.0    3.90    125.0    60%
    DPO backward (+recompute)             2048    941.9    8.23    114.4    55%
    DPO update total                      2048   1916.0   15.16    126.4    61%
    sampling (KV cache)                   1976    467.9   14.51     32.2    16%
    (peak: fp32 matmul 2048^3 = 206.6 GFLOP/s, the median of 162.2 before and ~251 after)

The update runs at 55-60% of the matmul rate (the matmuls of a 576-wide model are smaller than
the 2048^3 reference): it is compute-bound, so its lever is fewer FLOPs (logits only where
needed, as token_logprobs does; gradient checkpointing off when memory allows: -2 Nb S, a
quarter of the update). Sampling runs at 16% of the rate (each decoded token reads every weight
for only 8 rows) and is half of a GRPO step: its lever is more rows per decode step
(benchmarks/generation.py measures tokens/s by batch size).

    python benchmarks/roofline.py                     # embedded SmolLM2-135M
    python benchmarks/roofline.py --tiny --repeats 2  # the tiny random Llama
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path  # noqa: E402

from pns_mini.data import format_prompt, load_problems  # noqa: E402
from pns_mini.generation import sample  # noqa: E402
from pns_mini.losses import dpo_loss, grpo_loss  # noqa: E402
from pns_mini.modeling import load_model_and_tokenizer, reference_model, token_logprobs  # noqa: E402


def matmul_rate(n: int, repeats: int) -> float:
    """Median FLOP/s of an n x n fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t))
    return statistics.median(rates)


def block_params(model) -> int:
    """Nb: weights of every linear layer inside the transformer blocks (LoRA A/B included)."""
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in name)


def left_padded(tok, prompts: list[str], completion_len: int, seed: int):
    """(input_ids, attention_mask, completion_mask): prompts left-padded + random completions."""
    g = torch.Generator().manual_seed(seed)
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    P = max(map(len, rows))
    ids = torch.full((len(rows), P + completion_len), tok.pad_token_id)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, P - len(r):P], attn[i, P - len(r):] = torch.tensor(r), 1
    ids[:, P:] = torch.randint(100, len(tok) - 100, (len(rows), completion_len), generator=g)
    return ids, attn, torch.ones(len(rows), completion_len, dtype=torch.long)


def time_update(model, params, optimizer, ids, attn, cmask, loss_fn, repeats: int) -> dict[str, float]:
    """Median seconds of: reference forward (no grad), policy forward + loss, backward, AdamW step."""
    T = cmask.shape[1]
    times = {"ref_fwd": [], "policy_fwd": [], "backward": [], "optimizer": []}
    for _ in range(repeats + 1):  # the first round is a warm-up
        t0 = time.perf_counter()
        with torch.no_grad(), reference_model(model):
            model.eval()
            ref = token_logprobs(model, ids, attn, T)
        model.train()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(token_logprobs(model, ids, attn, T), ref, cmask)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(dt)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tiny", action="store_true", help="the tiny random 2-layer Llama instead of --model")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per phase after one warm-up (default 3)")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--dpo-pairs", type=int, default=4)
    p.add_argument("--dpo-length", type=int, default=256, help="tokens per DPO row (prompt + completion)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    peak_before = matmul_rate(a.matmul_size, 5)
    model, tok = load_model_and_tokenizer(model_path(a.model, a.tiny), lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
                                          gradient_checkpointing=a.gradient_checkpointing, device="cpu", dtype="fp32")
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    cfg = model.config
    Nb, dV = block_params(model), cfg.hidden_size * cfg.vocab_size
    recompute = 2 if a.gradient_checkpointing else 0
    questions = [q["question"] for q in load_problems("offline", limit=max(a.prompts, a.dpo_pairs))]
    rows = []  # (phase, tokens, flops, seconds)

    # --- GRPO update: N rows of prompt + T completion tokens ---
    T = a.max_completion_length
    prompts = [format_prompt(tok, q) for q in questions[:a.prompts] for _ in range(a.num_generations)]
    ids, attn, cmask = left_padded(tok, prompts, T, seed=1)
    advantages = torch.randn(ids.shape[0])
    grpo = lambda logps, ref, m: grpo_loss(logps, None, ref, advantages, m, beta=0.04, loss_type="dapo")[0]  # noqa: E731
    t = time_update(model, params, optimizer, ids, attn, cmask, grpo, a.repeats)
    S, K = ids.numel(), ids.shape[0] * (T + 1)
    F = 2 * Nb * S + 2 * dV * K
    rows += [("GRPO ref forward (no grad)", S, F, t["ref_fwd"]), ("GRPO policy forward", S, F, t["policy_fwd"]),
             ("GRPO backward" + (" (+recompute)" if recompute else ""), S, F + recompute * Nb * S, t["backward"]),
             ("GRPO update total", S, 3 * F + recompute * Nb * S, sum(t.values()))]

    # --- DPO update: 2B rows of dpo_length tokens (prompt + completion, the completion ~2/3) ---
    B, L = a.dpo_pairs, a.dpo_length
    dprompts = [format_prompt(tok, q) for q in questions[:B]] * 2
    P = max(len(tok(x, add_special_tokens=False)["input_ids"]) for x in dprompts)
    ids, attn, cmask = left_padded(tok, dprompts, L - P, seed=2)

    def dpo(logps, ref, m):
        seq, ref_seq = (logps * m).sum(-1), (ref * m).sum(-1)
        return dpo_loss(seq[:B], seq[B:], ref_seq[:B], ref_seq[B:], 0.1)[0].mean()

    t = time_update(model, params, optimizer, ids, attn, cmask, dpo, a.repeats)
    S, K = ids.numel(), ids.shape[0] * (L - P + 1)
    F = 2 * Nb * S + 2 * dV * K
    rows += [("DPO ref forward (no grad)", S, F, t["ref_fwd"]), ("DPO policy forward", S, F, t["policy_fwd"]),
             ("DPO backward" + (" (+recompute)" if recompute else ""), S, F + recompute * Nb * S, t["backward"]),
             ("DPO update total", S, 3 * F + recompute * Nb * S, sum(t.values()))]

    # --- sampling, for scale: the GRPO rows, KV-cached ---
    times, made = [], 0
    for r in range(a.repeats + 1):
        t0 = time.perf_counter()
        out = sample(model, tok, prompts[::a.num_generations], num_samples=a.num_generations, temperature=1.0,
                     max_new_tokens=T, seed=r)
        if r:
            times.append(time.perf_counter() - t0)
            made = int(out.completion_mask.sum())
    prefill = out.prompt_mask.numel()
    generated = out.completion_ids.numel()  # every row runs until the last one stops
    rows.append(("sampling (KV cache)", prefill + generated, 2 * Nb * prefill + 2 * (Nb + dV) * generated,
                 statistics.median(times)))
    peak = statistics.median([peak_before, matmul_rate(a.matmul_size, 5)])

    name = "tiny random Llama" if a.tiny else a.model
    print(f"{name}: Nb = {Nb / 1e6:.1f}M block weights (LoRA r{a.lora_r} included), d x V = {dV / 1e6:.1f}M, "
          f"gradient checkpointing {'on' if recompute else 'off'}, {a.threads} threads")
    print(f"fp32 matmul {a.matmul_size}^3: {peak / 1e9:.1f} GFLOP/s (median of before {peak_before / 1e9:.1f} and "
          f"after; this is 100%)")
    header = f"{'phase':<34} {'tokens':>7} {'GFLOP':>8} {'s':>7} {'GFLOP/s':>8} {'% peak':>7}"
    print(header)
    print("-" * len(header))
    for phase, tokens, flops, seconds in rows:
        rate = flops / seconds
        print(f"{phase:<34} {tokens:>7} {flops / 1e9:>8.1f} {seconds:>7.2f} {rate / 1e9:>8.1f} {rate / peak:>6.0%}")
    print(f"(sampling made {made} completion tokens inside the masks, {generated} computed)")


if __name__ == "__main__":
    main()
