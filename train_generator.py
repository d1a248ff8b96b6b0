"""Stage 1 of PNS: reverse-RL GRPO of the negative generator on the composite reward.

The generator is rewarded for well-formed solutions that end in a VERIFIED WRONG answer and still
look right to a reward model and an LLM judge (pns_mini/rewards.py: the reward, its gating and the
anti-hacking rules). Its samples feed synthesize.py (stage 2).

Reads   --problems; --model, the base a LoRA is trained on; --reward-model, --judge-model (default: that base).
Writes  --output-dir: config.json, metrics.jsonl (a row per step), samples.jsonl (completions with
        answer, gold, reward terms and advantage), checkpoints/step-N/, final/ (adapter + tokenizer,
        for `synthesize.py --generator` and `evaluate.py --model`), plots/*.png, report.md.

Examples
    # CPU demo, embedded SmolLM2-135M, generated problems (~10 min/step on 2 busy cores). Plumbing, not learning:
    # it seldom ends in \\boxed{} within 128 tokens, so every group has zero reward spread and the gradient is 0.
    python train_generator.py --problems offline --prompts-per-step 2 --num-generations 4 \\
        --max-completion-length 128 --max-steps 6 --output-dir runs/gen-cpu
    # one consumer GPU (~12 GB): QLoRA (4-bit is the default on CUDA) on a 1.5B instruct model
    python train_generator.py --model Qwen/Qwen2.5-1.5B-Instruct --problems gsm8k_train --max-steps 300 \\
        --prompts-per-step 4 --num-generations 8 --max-completion-length 512 --output-dir runs/gen-qwen1.5b
    # the same command + --resume continues it; with a larger --max-steps it extends a finished run

Method choices and deviations from the paper (arXiv 2602.03516)
    - The paper's generator is Qwen2.5-7B-Instruct (weights not public) with its own reward model and judge.
      Here a LoRA on a small instruct model; the reward model and judge default to its base with the adapter
      off (no second copy), so the policy's updates never change its reward.
    - Weights, gating (not in the paper): rewards.DEFAULT_REWARD_WEIGHTS; malformed -1 < correct 0.5 < wrong 1.5-3.5.
    - GRPO as TRL 1.16's GRPOTrainer (token-level ratio, clipped surrogate, k3 KL to the adapter-off reference)
      with its defaults, except: beta 0.04 (TRL 0.0; early TRL 0.04): the KL keeps the base's fluent style, which
      makes a negative plausible; learning_rate 1e-5 for LoRA (TRL's 1e-6 is for full fine-tuning); cosine with 10
      warmup steps (TRL: linear, 0); the scheduler steps once per step (TRL: per optimizer update; same if mu = 1).
    - Old (num_iterations > 1) and reference log-probs: no-grad passes in eval mode, as sampled.
    - CPU: fp32 and no 4-bit by default: bitsandbytes 4-bit sampled 1.4-2.7x slower than fp32 there.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pns_mini import rewards, scorers
from pns_mini.config import check_flags, main_guard, save_config
from pns_mini.data import DataError, append_jsonl, format_prompt, load_problems, write_atomic
from pns_mini.generation import sample
from pns_mini.losses import (GRPO_LOSS_TYPES, SCALE_REWARDS, group_advantages, grpo_loss, grpo_normalizer,
                             zero_std_fraction)
from pns_mini.modeling import (load_model_and_tokenizer, reference_model, resolve_device, resolve_loading,
                               save_atomic, token_logprobs, trainable_parameters)
from pns_mini.runs import (check_run_folder, epoch_order, fingerprint, make_scheduler, plot_metrics, read_metrics,
                           save_checkpoint, seed_everything, start_run)

TIMING_KEYS = ("time/generate", "time/score", "time/update", "time/step", "tokens/s")  # differ between equal runs
RESUMABLE = ("max_steps", "save_steps", "logging_steps", "log_samples_steps", "device")  # what --resume may change


@dataclass
class Config:
    model: str = "smollm2-135m"
    """Generator base: Hub id, local folder or alias (paper: Qwen2.5-7B-Instruct)."""
    output_dir: str = "runs/generator"
    """Run folder (config, metrics, samples, checkpoints, final adapter, plots, report)."""
    problems: str = "gsm8k_train"
    """Training problems: offline | gsm8k_train | a benchmark name | a JSONL of {id, question, gold}."""
    data_dir: str | None = None
    """Folder holding benchmarks/ and train/ (default: $PNS_MINI_DATA, ../shared/data, ./data)."""
    limit: int | None = None
    """Keep the first N problems (none = all; offline: 200)."""
    seed: int = 0
    """Seed of the LoRA init, the problem order and the sampling."""
    max_steps: int = 200
    """Training steps; one step = one batch of rollouts (50-1000)."""
    resume: bool = False
    """Continue from the latest checkpoint in --output-dir; a larger --max-steps extends a finished run."""
    prompts_per_step: int = 4
    """B: problems sampled per step (1-64)."""
    num_generations: int = 8
    """G: completions per problem, the group of GRPO's advantage (>= 2; 4-16)."""
    max_completion_length: int = 512
    """Max new tokens per completion; a truncated completion fails the format check (128-1024)."""
    temperature: float = 1.0
    """Sampling temperature (> 0; 0.7-1.2); log-probs use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (0-1]; below 1 the loss still scores the full softmax (as TRL): keep 1.0."""
    enable_thinking: bool = False
    """Qwen3-style templates: write <think>...</think> first, answer read after it (off: empty think block)."""
    reward_weights: str | None = None
    """'format=0.5,accuracy=1,reward_model=1,judge=1' (partial is fine) or 4 numbers in that order; none = defaults."""
    malformed_penalty: float = rewards.MALFORMED_PENALTY
    """Total reward of a malformed completion (must be below the format weight)."""
    plausibility_only_when_wrong: bool = True
    """Reward model and judge count only for verified-wrong answers (--no-...: always; an ablation)."""
    reward_model: str | None = None
    """Classifier reward model folder (train_reward_model.py); none = generative Yes/No score by the base."""
    judge_model: str | None = None
    """LLM judge of the reasoning; none = the base model (the policy with its adapter off)."""
    scorer_batch_size: int = 8
    """Rows per forward of the reward model and the judge (lower it when memory runs out)."""
    beta: float = 0.04
    """Weight of the k3 KL to the reference (adapter off); 0 skips the reference pass (0-0.1)."""
    epsilon: float = 0.2
    """Lower clip range of the ratio, 1 - epsilon (0.1-0.3)."""
    epsilon_high: float | None = None
    """Upper clip range, 1 + epsilon_high; none = epsilon (DAPO: 0.28)."""
    num_iterations: int = 1
    """mu: updates per batch of rollouts (1-4); > 1 computes old log-probs in a no-grad pass."""
    scale_rewards: str = "group"
    """Divide centred rewards by the std of: group | batch | none (Dr. GRPO)."""
    loss_type: str = "dapo"
    """Reduction: dapo (token mean over the batch) | dr_grpo (sum / N x max_len) | grpo (mean of sequence means)."""
    mask_truncated_completions: bool = False
    """Truncated completions get loss mask 0 (they still count in the group's advantage), as TRL."""
    learning_rate: float = 1e-5
    """Peak AdamW learning rate of the LoRA weights (5e-6 - 5e-5)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0-0.1)."""
    per_device_train_batch_size: int = 8
    """Rows per forward/backward; must divide prompts_per_step x num_generations."""
    warmup_steps: int = 10
    """Linear LR warmup steps (0-50)."""
    lr_scheduler_type: str = "cosine"
    """cosine (to 0 at max_steps) | constant (after warmup)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (<= 0: no clipping; the norm is logged either way)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward: less memory, about 1/3 more update time."""
    load_in_4bit: bool | None = None
    """QLoRA: 4-bit NF4 base. Default: on CUDA yes, on CPU no (slower there)."""
    lora_r: int = 16
    """LoRA rank (4-64)."""
    lora_alpha: int = 32
    """LoRA scale numerator (usually 2 x lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0-0.1); > 0 makes the ratio noisy when num_iterations > 1."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16."""
    logging_steps: int = 1
    """Write a metrics row (that step's values) every N steps and at the last step."""
    log_samples_steps: int = 10
    """Write every completion of the step to samples.jsonl at step 1 and every N steps."""
    save_steps: int = 50
    """Checkpoint every N steps (and always at the end)."""

    def __post_init__(self):
        N = self.prompts_per_step * self.num_generations
        if self.num_generations < 2:
            raise ValueError(f"--num-generations must be >= 2 (GRPO compares completions within a group), "
                             f"got {self.num_generations}")
        check_flags(self, {1: ("prompts_per_step", "per_device_train_batch_size", "max_steps", "num_iterations",
                               "max_completion_length", "lora_r", "save_steps", "logging_steps", "log_samples_steps",
                               "scorer_batch_size", "limit"), 0: ("warmup_steps",)},
                    {"loss_type": GRPO_LOSS_TYPES, "scale_rewards": SCALE_REWARDS,
                     "lr_scheduler_type": ("cosine", "constant")})
        if N % self.per_device_train_batch_size:
            raise ValueError(f"--per-device-train-batch-size {self.per_device_train_batch_size} must divide "
                             f"prompts_per_step x num_generations = {N}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be > 0 (the loss needs the sampling distribution) "
                             "and --top-p in (0, 1]")
        if self.beta < 0 or self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError("--beta must be >= 0, --epsilon > 0 and --epsilon-high >= 0")
        weights = rewards.parse_reward_weights(self.reward_weights)
        if not any(weights.values()):
            raise ValueError(f"--reward-weights: all weights are zero ({self.reward_weights}): nothing to learn")
        if self.malformed_penalty >= weights["format"]:
            raise ValueError(f"--malformed-penalty {self.malformed_penalty} must be below the format weight "
                             f"{weights['format']}, or a malformed completion scores like a correct one")


@torch.no_grad()
def no_grad_logps(model, ids, attn, T: int, chunks: list[slice], temperature: float) -> torch.Tensor:
    """(N, T) completion-token log-probs, chunk by chunk, in eval mode (as sampled: no dropout)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([token_logprobs(model, ids[sl], attn[sl], T, temperature) for sl in chunks])
    finally:
        model.train(was_training)


def step_metrics(scored: list[dict], totals: torch.Tensor, G: int, rollout) -> dict:
    """Reward components (means over the step's completions), outcome rates and lengths."""
    n, lengths = len(scored), rollout.lengths.float()
    share = lambda pred: sum(1 for r in scored if pred(r)) / n  # noqa: E731
    row = {"reward/total": totals.mean().item(), "reward/std": totals.std().item() if n > 1 else 0.0}
    for name in rewards.COMPONENTS:  # components as returned, gated zeros included
        row[f"reward/{name}"] = sum(r[name] for r in scored) / n
    row["frac_reward_zero_std"], row["rate/format"] = zero_std_fraction(totals, G), share(lambda r: r["format"] == 1.0)
    for verdict in ("correct", "wrong", "no_answer", "unparseable"):
        row[f"rate/{verdict}"] = share(lambda r: r["verdict"] == verdict)
    row["rate/wrong_well_formed"] = share(lambda r: r["format"] == 1.0 and r["verdict"] == "wrong")
    row["rate/truncated"] = rollout.truncated.float().mean().item()
    row["length/mean"], row["length/max"] = lengths.mean().item(), lengths.max().item()
    for reason in rewards.FORMAT_REASONS:
        row[f"format_fail/{reason}"] = share(lambda r: r["format_reason"] == reason)
    return row


def write_report(out: Path, cfg: Config, rows: list[dict], n_problems: int) -> None:
    """report.md: component means over the first vs last few steps, and the time split."""
    k = max(1, min(3, len(rows) // 2))
    keys = [f"reward/{c}" for c in ("total",) + rewards.COMPONENTS] + [
        "rate/format", "rate/wrong_well_formed", "rate/correct", "rate/no_answer", "rate/truncated",
        "frac_reward_zero_std", "length/mean", "kl", "grad_norm"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731

    def mean(rs, key):  # None when a row lacks the value (kl with beta 0)
        values = [r.get(key) for r in rs]
        return sum(values) / len(values) if values and None not in values else None

    lines = ["# Negative generator (GRPO, reverse RL)", "",
             f"- model `{cfg.model}` + LoRA r={cfg.lora_r}, problems `{cfg.problems}` ({n_problems}), "
             f"{cfg.prompts_per_step} x {cfg.num_generations} completions per step, "
             f"max {cfg.max_completion_length} tokens, {len(rows)} steps logged",
             f"- loss {cfg.loss_type}, beta {cfg.beta}, epsilon {cfg.epsilon}, num_iterations {cfg.num_iterations}, "
             f"lr {cfg.learning_rate}, reward weights {rewards.parse_reward_weights(cfg.reward_weights)}",
             f"- final adapter: `{out / 'final'}` (synthesize.py --generator, evaluate.py --model)", "",
             f"## First {k} vs last {k} logged steps (means)", "",
             f"| metric | first {k} | last {k} |", "| --- | --- | --- |"]
    lines += [f"| {key} | {fmt(mean(rows[:k], key))} | {fmt(mean(rows[-k:], key))} |" for key in keys]
    times = {key: mean(rows, key) or 0.0 for key in ("time/generate", "time/score", "time/update", "time/step")}
    lines += ["", "## Time per step (mean seconds)", "", "| phase | seconds | share |", "| --- | --- | --- |"]
    lines += [f"| {key} | {times[key]:.1f} | {times[key] / max(times['time/step'], 1e-9):.0%} |"
              for key in ("time/generate", "time/score", "time/update")]
    lines += [f"| time/step | {times['time/step']:.1f} | |",
              f"\nSampling throughput: {fmt(mean(rows, 'tokens/s'))} completion tokens/s."]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


PLOT_PANELS = {"rewards": ["reward/total"] + [f"reward/{c}" for c in rewards.COMPONENTS],
               "outcomes": ["rate/format", "rate/wrong_well_formed", "rate/correct", "rate/no_answer",
                            "rate/truncated", "frac_reward_zero_std"],
               "kl": ["kl"], "length": ["length/mean", "length/max"],
               "time": ["time/generate", "time/score", "time/update"], "optimization": ["grad_norm", "clip_ratio"]}


def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    metrics_path, samples_path = out / "metrics.jsonl", out / "samples.jsonl"
    weights = rewards.parse_reward_weights(cfg.reward_weights)
    problems = load_problems(cfg.problems, cfg.data_dir, cfg.limit)  # fails on bad data before the model load
    resolved = {**resolve_loading(cfg.device, cfg.dtype, cfg.load_in_4bit), "data": fingerprint(problems)}
    check_run_folder(out, cfg, RESUMABLE, resolved, cfg.max_steps)  # a used folder, or a changed run: refused

    # --- setup: policy = LoRA on a (4-bit) base; reference, judge, generative RM = adapter off ---
    seed_everything(cfg.seed)
    device, load_in_4bit = resolve_device(cfg.device), resolved["load_in_4bit"]
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, load_in_4bit=load_in_4bit, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, gradient_checkpointing=cfg.gradient_checkpointing,  # memory for time
        device=cfg.device, dtype=cfg.dtype)
    model.train()
    rm_scorer, judge_scorer = None, None
    if weights["reward_model"] or weights["judge"]:  # a model that cannot load fails here, before training
        rm_scorer, judge_scorer = scorers.build_scorers(
            model, tokenizer, reward_model=cfg.reward_model, judge_model=cfg.judge_model, base_model_name=cfg.model,
            device=cfg.device, dtype=cfg.dtype, load_in_4bit=load_in_4bit, batch_size=cfg.scorer_batch_size,
            share_prefix=weights["reward_model"] > 0 and weights["judge"] > 0)  # one shared pass serves both
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json", resolved=resolved)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    B, G, mb = cfg.prompts_per_step, cfg.num_generations, cfg.per_device_train_batch_size
    chunks = [slice(s, s + mb) for s in range(0, B * G, mb)]  # micro-batches of the N = B x G rows

    step, extra = start_run(out, model, optimizer, [metrics_path, samples_path])  # step 0, or the latest checkpoint's
    position = extra.get("position", 0)
    if extra.get("num_problems", len(problems)) != len(problems):
        raise DataError(f"{out}/checkpoints/step-{step}: saved with {extra['num_problems']} problems, now "
                        f"{len(problems)}: the data order would not continue; use the same --problems/--limit")
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr_scheduler_type, step)
    if cfg.warmup_steps >= cfg.max_steps:
        tqdm.write(f"note: warmup_steps={cfg.warmup_steps} >= max_steps={cfg.max_steps}: the LR never reaches its peak")

    bar = tqdm(total=cfg.max_steps, initial=step, desc="generator", dynamic_ncols=True)
    while step < cfg.max_steps:
        step += 1
        t_start = time.perf_counter()

        # ---------------- rollout: B problems x G completions (KV-cached sampling) ----------------
        batch = [problems[i] for i in epoch_order(len(problems), cfg.seed, position, B)]
        position += B
        prompts = [format_prompt(tokenizer, p["question"], enable_thinking=cfg.enable_thinking) for p in batch]
        rollout = sample(model, tokenizer, prompts, num_samples=G, temperature=cfg.temperature, top_p=cfg.top_p,
                         max_new_tokens=cfg.max_completion_length, seed=cfg.seed * 1_000_003 + step)
        row_problems = [batch[k] for k in rollout.prompt_index]  # (N,) rows are prompt-major: p0 x G, p1 x G, ...
        questions, texts = [p["question"] for p in row_problems], rollout.texts
        golds, truncated = [p["gold"] for p in row_problems], rollout.truncated.tolist()
        t_generate = time.perf_counter() - t_start

        # ---------------- reward: grade first; model scores only where they can count ----------------
        scored = rewards.score_completions(  # the scorers see only the rows whose score counts
            texts, golds, truncated, rm_scorer, judge_scorer, weights, questions=questions,
            malformed_penalty=cfg.malformed_penalty, plausibility_only_when_wrong=cfg.plausibility_only_when_wrong)
        counted = [r for r in scored if rewards.plausibility_counts(r, cfg.plausibility_only_when_wrong)]
        t_score = time.perf_counter() - t_start - t_generate

        # ---------------- advantage: group-relative, one per completion ----------------
        totals = torch.tensor([r["total"] for r in scored], dtype=torch.float32)  # (N,)
        advantages = group_advantages(totals, G, cfg.scale_rewards)  # (N,), 0 for zero-spread groups

        # ---------------- update: num_iterations x (micro-batches -> clip -> AdamW step) ----------------
        ids, attn = rollout.input_ids.to(device), rollout.attention_mask.to(device)  # (N, P+T)
        mask = rollout.completion_mask.to(device)  # (N, T) 1 up to and including the first EOS
        if (mask.sum(-1) < 1).any():
            raise RuntimeError(f"step {step}: a completion mask is empty (generation.sample bug)")
        if cfg.mask_truncated_completions:  # TRL semantics: out of the loss, still in the group's advantage
            mask = mask * (~rollout.truncated).to(device).long().unsqueeze(1)
        T, adv = mask.shape[1], advantages.to(device)
        D = grpo_normalizer(cfg.loss_type, mask, cfg.max_completion_length)  # GLOBAL: the same for every micro-batch
        # num_iterations == 1: old = None -> logps.detach() (ratio 1), as TRL; else a no-grad pass before updating
        old = no_grad_logps(model, ids, attn, T, chunks, cfg.temperature) if cfg.num_iterations > 1 else None
        ref = None
        if cfg.beta != 0:  # memory trick: the reference is the policy with its adapter off
            with reference_model(model):
                ref = no_grad_logps(model, ids, attn, T, chunks, cfg.temperature)  # (N, T)
        lr, sums = optimizer.param_groups[0]["lr"], defaultdict(float)
        for _ in range(cfg.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            for sl in chunks:
                logps = token_logprobs(model, ids[sl], attn[sl], T, cfg.temperature)  # (mb, T) fp32
                loss, stats = grpo_loss(
                    logps, None if old is None else old[sl], None if ref is None else ref[sl], adv[sl], mask[sl],
                    epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, loss_type=cfg.loss_type,
                    max_completion_length=cfg.max_completion_length, normalizer=D)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"step {step}: loss is {loss.item()}; lower --learning-rate or use fp32/bf16")
                loss.backward()  # micro-batch gradients add up to the full batch's (global D)
                tokens = float(mask[sl].sum())
                sums["loss"] += loss.item() / cfg.num_iterations
                sums["tokens"] += tokens
                for key, value in stats.items():  # token-weighted means over the step
                    sums[key] += value * tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            sums["grad_norm"] += grad_norm.item() / cfg.num_iterations
            optimizer.step()
        scheduler.step()
        t_update = time.perf_counter() - t_start - t_generate - t_score

        # ---------------- log, samples, checkpoint ----------------
        t_step = time.perf_counter() - t_start
        row = {"step": step, "epoch": round(position / len(problems), 4), **step_metrics(scored, totals, G, rollout),
               "scored/n": len(counted),
               **{f"scored/{name}": sum(r[name] for r in counted) / len(counted) if counted and on else None
                  for name, on in (("reward_model", rm_scorer is not None and weights["reward_model"] > 0),
                                   ("judge", judge_scorer is not None and weights["judge"] > 0))},
               "loss": sums["loss"], "kl": sums["kl"] / max(sums["tokens"], 1.0) if ref is not None else None,
               "clip_ratio": sums["clip_ratio"] / max(sums["tokens"], 1.0), "grad_norm": sums["grad_norm"], "lr": lr,
               "time/generate": t_generate, "time/score": t_score, "time/update": t_update, "time/step": t_step,
               "tokens/s": rollout.lengths.sum().item() / max(t_generate, 1e-9)}
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            append_jsonl(metrics_path, row)
        if step == 1 or step % cfg.log_samples_steps == 0:
            for i, r in enumerate(scored):
                append_jsonl(samples_path, {
                    "step": step, "prompt_id": row_problems[i]["id"], "question": questions[i],
                    "completion": texts[i], "answer": r["answer"], "gold": golds[i], "verdict": r["verdict"],
                    "format_reason": r["format_reason"],
                    **{name: r[name] for name in ("total",) + rewards.COMPONENTS},
                    "advantage": advantages[i].item(), "truncated": truncated[i], "length": int(rollout.lengths[i])})
        kl_text = "-" if row["kl"] is None else f"{row['kl']:.4f}"
        bar.set_postfix_str(f"R {row['reward/total']:.2f} fmt {row['reward/format']:.2f} "
                            f"acc {row['reward/accuracy']:.2f} rm {row['reward/reward_model']:.2f} "
                            f"judge {row['reward/judge']:.2f} | correct {row['rate/correct']:.2f} "
                            f"no_ans {row['rate/no_answer']:.2f} zero_std {row['frac_reward_zero_std']:.2f} | "
                            f"kl {kl_text} len {row['length/mean']:.0f} gn {row['grad_norm']:.3f} | "
                            f"gen/score/upd {t_generate:.0f}/{t_score:.0f}/{t_update:.0f}s")
        bar.update(1)
        if step % cfg.save_steps == 0 or step == cfg.max_steps:
            save_checkpoint(out, step, model, tokenizer, optimizer, scheduler,
                            extra={"position": position, "num_problems": len(problems)})
            if step < cfg.max_steps:  # the last step's plots are drawn below
                plot_metrics(metrics_path, out / "plots", PLOT_PANELS)
    bar.close()

    # --- final adapter, plots, report ---
    save_atomic(model, tokenizer, out / "final")
    plot_metrics(metrics_path, out / "plots", PLOT_PANELS)
    metrics = read_metrics(metrics_path)
    write_report(out, cfg, metrics, len(problems))
    print(f"done: {out} (final adapter {out / 'final'}, report {out / 'report.md'})")
    return {"metrics": metrics, "final": out / "final", "steps": step}


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
