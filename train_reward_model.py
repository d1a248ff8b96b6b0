r"""Train the reward model PNS uses as one term of the negative generator's reward: a causal LM
with a scalar head (AutoModelForSequenceClassification, one label), Bradley-Terry (BT) loss plus a
centring penalty (losses.reward_model_loss):

    L = mean over pairs of [ -log sigmoid(r_chosen - r_rejected) + lambda * (r_chosen + r_rejected)^2 ]

The first term only sees the margin; the second keeps the scores near zero, so they add cleanly to
the other reward terms (format, accuracy inversion, CoT judge) in train_generator.py.

Reads:  --pairs: TRL-format preference JSONL (e.g. synthesize.py's; extra fields kept), or `offline` (offline_pairs).
Writes: <output-dir>/config.json, metrics.jsonl, checkpoints/step-N/, adapter/ (LoRA + score head),
        final/ (the MERGED plain sequence-classification model: `--reward-model DIR` in train_generator
        and synthesize, TRL, HF), samples.jsonl (held-out pairs, both scores), plots/, summary.json, report.md.

Examples:
    python train_reward_model.py --pairs offline --limit 80 --eval-fraction 0.2 --max-steps 16 \
        --learning-rate 2e-4 --warmup-steps 2 --eval-steps 8 --output-dir runs/rm-offline  # CPU: ~30-40 min
    python train_reward_model.py --pairs runs/synth/pairs.jsonl --model Qwen/Qwen3-4B-Instruct-2507 \
        --gradient-checkpointing --output-dir runs/rm-qwen3-4b             # the paper's setting, QLoRA
    python train_reward_model.py --pairs runs/synth/pairs.jsonl --output-dir runs/rm --resume --max-steps 400

Method choices and deviations from the paper (arXiv 2602.03516):
- The score head is a new bias-free linear layer on the last hidden state, trained with the LoRA
  adapter (peft modules_to_save=["score"]); the base defaults to SmolLM2-135M, not Qwen3-4B.
- lambda is not given in the paper: 0.01 is TRL's suggestion (after Eisenstein et al. 2023). It
  moves a pair's mean score, not its margin, but competes with the margin through the shared
  weights, so keep it small: at 0.01 scores summing to 3 pay 0.09, against a BT term of 0.1-0.7.
- Text as TRL's RewardTrainer builds it, scored at the LAST token that is not pad (Hugging Face's
  rule: with pad == EOS, a text ending in EOS is read at the token before it). Rows are left-padded
  with position ids that skip the padding, so a score does not depend on its batch.
- Over-long pairs are dropped, not truncated: cutting the end would cut the final answer.
"""
from __future__ import annotations

import gc
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pns_mini import data, generation, losses, runs, scorers
from pns_mini.config import check_flags, main_guard, save_config
from pns_mini.modeling import (load_model_and_tokenizer, resolve_loading, save_atomic, sequence_scores,
                               trainable_parameters)


@dataclass
class Config:
    model: str = "smollm2-135m"
    """Base instruct model: Hub id, local folder or the alias smollm2-135m (the paper: Qwen3-4B)."""
    pairs: str = "offline"
    """Preference pairs JSONL (TRL format: prompt/chosen/rejected; a comma list = several files), or 'offline'."""
    limit: int | None = None
    """Use only the first N pairs of the file (offline: make N pairs; default 200); none = all."""
    output_dir: str = "runs/reward-model"
    """Run folder (config, metrics, checkpoints, adapter/, final/, plots, report)."""
    seed: int = 0
    """Seed for the score head's init, the held-out split and the data order."""
    eval_fraction: float = 0.1
    """Share of PROMPTS held out for evaluation (0-0.5; 0 = no held-out set)."""
    max_length: int = 1024
    """Pairs with a side longer than this many tokens are dropped (and counted), never truncated."""
    center_rewards_coefficient: float = 0.01
    """lambda of the centring term lambda*(r_c+r_r)^2 (0-0.1; 0 = plain Bradley-Terry)."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the LoRA weights and the score head (1e-5 to 5e-4)."""
    per_device_train_batch_size: int = 4
    """Pairs per micro-batch (each pair is two sequences in one forward)."""
    gradient_accumulation_steps: int = 2
    """Micro-batches per optimizer step (pairs per step = this * per_device_train_batch_size)."""
    per_device_eval_batch_size: int = 8
    """Pairs per forward when scoring the held-out set."""
    max_steps: int = 100
    """Optimizer steps (the data cycles through reshuffled epochs as needed)."""
    warmup_steps: int = 5
    """Linear LR warmup steps (0 to ~10% of max_steps)."""
    lr_scheduler_type: str = "cosine"
    """LR schedule after warmup: cosine (to 0 at max_steps) or constant."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    lora_r: int = 16
    """LoRA rank on the attention and MLP projections (8-64)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (usually 2 * lora_r)."""
    load_in_4bit: bool | None = None
    """4-bit NF4 base (QLoRA); unset = on when the device is CUDA."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (turn on for 4B models on one GPU)."""
    eval_steps: int = 10
    """Score the held-out set every N steps and at the last step (0 = only at the last step)."""
    save_steps: int = 50
    """Write checkpoints/step-N every N steps (one is always written at the end)."""
    resume: bool = False
    """Continue from the latest checkpoint in --output-dir (a larger --max-steps extends a finished run)."""
    device: str = "auto"
    """cuda, cpu or auto."""

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction <= 0.5:
            raise ValueError(f"--eval-fraction must be in [0, 0.5], got {self.eval_fraction}")
        check_flags(self, {1: ("per_device_train_batch_size", "gradient_accumulation_steps",
                               "per_device_eval_batch_size", "max_steps", "lora_r", "max_length", "limit"),
                           0: ("center_rewards_coefficient", "warmup_steps", "eval_steps", "save_steps")},
                    {"lr_scheduler_type": ("cosine", "constant")})


# What --resume may change: the run's length, and what is saved or evaluated; anything else is a new run.
RESUMABLE = ("max_steps", "save_steps", "eval_steps", "per_device_eval_batch_size", "device")


# --- Pairs: read and check, or make from the offline problems -------------------------------------
def load_pairs(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of TRL-format preference JSONL files (a comma list), checked; an absent prompt reads as "" or []."""
    rows = [r for p in str(path).split(",") if p.strip() for r in data.read_pairs(p.strip(), prompt_required=False)]
    for row in rows:
        row.setdefault("prompt", [] if isinstance(row["chosen"], list) else "")
    return rows if limit is None else rows[:limit]


_LAST_OP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\$?)(\d+)")  # "60 - 13 = $47": the step's arithmetic


def offline_pairs(n: int, seed: int) -> list[dict]:
    r"""n pairs from the offline problems, in synthesize.py's layout: chosen = the worked solution,
    rejected = it with its LAST step altered (and the \boxed{} answer after it): two in three by an
    arithmetic slip (off by 1, 2 or 10), one in three by the wrong operation computed correctly
    (consistent arithmetic, wrong reasoning), so checking the last sum alone does not win."""
    pairs = []
    for p in data.load_problems("offline", limit=n, seed=seed):
        rng = random.Random(f"pns-mini/rm-pairs/{seed}/{p['id']}")
        *steps, _ = p["solution"].split("\n")  # the last line holds the boxed answer
        m = list(_LAST_OP.finditer(steps[-1]))[-1]
        a, op, b, dollar, c = m.groups()
        a, b, gold = int(a), int(b), int(c)
        assert str(gold) == p["gold"], (p["id"], steps[-1])  # the last step computes the answer
        kind, wrong = "slip", None
        if len(pairs) % 3 == 2:  # the wrong operation, computed correctly
            swapped = {"+": "-", "-": "+", "*": "+", "/": "*"}[op]
            value = {"+": a + b, "-": a - b, "*": a * b}[swapped]
            if 0 < value != gold:
                kind, op, wrong = "wrong_op", swapped, value
        if wrong is None:  # an arithmetic slip in the last step
            wrong = gold + rng.choice([d for d in (-10, -2, -1, 1, 2, 10) if gold + d > 0])
        last = steps[-1][:m.start()] + f"{a} {op} {b} = {dollar}{wrong}" + steps[-1][m.end():]
        rejected = "\n".join(steps[:-1] + [last, data.final_answer_sentence(str(wrong))])
        pairs.append({
            "prompt": data.prompt_messages(p["question"]),  # the policy's prompt, as synthesize.py writes it
            "chosen": [{"role": "assistant", "content": p["solution"]}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "id": p["id"], "gold": p["gold"], "rejected_answer": str(wrong), "kind": kind, "line": None})
    return pairs


def split_by_prompt(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): a seeded share of the distinct prompts, with all their pairs, is held out."""
    keys = list(dict.fromkeys(json.dumps(p["prompt"], sort_keys=True) for p in pairs))  # file order
    random.Random(f"pns-mini/rm-split/{seed}").shuffle(keys)
    held = set(keys[:round(eval_fraction * len(keys))])
    is_eval = [json.dumps(p["prompt"], sort_keys=True) in held for p in pairs]
    return [p for p, e in zip(pairs, is_eval) if not e], [p for p, e in zip(pairs, is_eval) if e]


# --- Text -> tokens -> scores ---------------------------------------------------------------------
def encode(tokenizer, prompt, completion, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of one side of a pair: the text RewardModelScorer scores and TRL builds, tokenized as TRL does."""
    try:
        text = scorers.reward_model_text(tokenizer, prompt, completion, chat_template_kwargs)
    except ValueError as e:
        raise data.DataError(str(e)) from None
    return tokenizer(text, add_special_tokens=not isinstance(prompt, list))["input_ids"]


def score_rows(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B,) scores of token rows in one forward: left padding + position ids skipping it."""
    ids, mask = generation.left_pad(rows, pad_id)
    device = next(model.parameters()).device
    return sequence_scores(model, ids.to(device), mask.to(device))  # (B,) fp32


@torch.no_grad()
def score_pairs(model, pairs: list[dict], pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (N,), rejected (N,)) scores in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    scores = [score_rows(model, [p["chosen_ids"] for p in b] + [p["rejected_ids"] for p in b], pad_id).cpu().view(2, -1)
              for b in (pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size))]  # (2, B) each
    model.train(was_training)
    return torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores])


def pair_stats(chosen: torch.Tensor, rejected: torch.Tensor, center_coef: float) -> dict[str, float]:
    loss, stats = losses.reward_model_loss(chosen, rejected, center_coef)
    return {"loss": loss.item(), **stats}


# --- Report ---------------------------------------------------------------------------------------
def plot_score_hist(scores: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """One panel per split: histograms of the chosen (correct) and rejected (wrong) scores."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    for ax, (name, (chosen, rejected)) in zip(axes[0], scores.items()):
        both = torch.cat([chosen, rejected])
        bins = torch.linspace(both.min().item() - 1e-3, both.max().item() + 1e-3, 21).tolist()
        ax.hist(chosen.tolist(), bins=bins, alpha=0.6, label=f"chosen (correct), mean {chosen.mean():.2f}")
        ax.hist(rejected.tolist(), bins=bins, alpha=0.6, label=f"rejected (wrong), mean {rejected.mean():.2f}")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set(title=f"{name}: {len(chosen)} pairs", xlabel="reward-model score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion k/n: "beats chance" when its low end is above 0.5."""
    p, d = k / n, 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    centre = (p + z * z / (2 * n)) / d
    return [max(0.0, centre - half), min(1.0, centre + half)]


def by_group(pairs: list[dict]) -> dict[str, list[int]]:
    """Pair indices by their "source" (synthesize.py) or "kind" (offline pairs) metadata."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(str(p.get("source") or p.get("kind") or "-"), []).append(i)
    return groups


def write_report(out: Path, cfg: Config, summary: dict) -> None:
    def row(name, s):
        return f"| {name} | - | - | - | - | - |" if s is None else (
            f"| {name} | {s['pairs']} | {s['accuracy']:.3f} ({s['accuracy_ci95'][0]:.2f}-{s['accuracy_ci95'][1]:.2f}) "
            f"| {s['score_mean']:+.3f} | {s['chosen_mean']:+.3f} / {s['rejected_mean']:+.3f} "
            f"| {s['margin_mean']:+.3f} |")
    n, group_rows = summary["pairs"], []
    for name in ("eval", "train"):
        if summary.get(f"{name}_by_group"):
            group_rows += [f"By source ({'held-out' if name == 'eval' else 'train'}):", "",
                           "| source | pairs | accuracy | margin |", "| --- | --- | --- | --- |"]
            group_rows += [f"| {g} | {s['pairs']} | {s['accuracy']:.3f} | {s['margin_mean']:+.3f} |"
                           for g, s in summary[f"{name}_by_group"].items()] + [""]
    data.write_atomic(out / "report.md", "\n".join([
        f"# Reward model: {cfg.model} on {cfg.pairs}", "",
        f"Bradley-Terry + centring (lambda {cfg.center_rewards_coefficient}), LoRA r={cfg.lora_r}, {summary['steps']} "
        f"steps of {cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps} pairs, lr {cfg.learning_rate} "
        f"({cfg.lr_scheduler_type}). Pairs: {n['train']} train, {n['eval']} held out (by prompt), "
        f"{n['dropped_too_long']} dropped as longer than {cfg.max_length} tokens.", "",
        "Scores of the merged model in `final/` (eval mode):", "",
        "| split | pairs | accuracy (95% Wilson) | mean score | chosen / rejected mean | margin |",
        "| --- | --- | --- | --- | --- | --- |", row("held-out", summary["eval"]), row("train", summary["train"]), "",
        *group_rows, "![scores](plots/score_hist.png)", "",
        "Load it with `--reward-model final` (merged) or `--reward-model adapter`. Curves: plots/*.png.", ""]))


# --- Main -----------------------------------------------------------------------------------------
def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    metrics_path = out / "metrics.jsonl"
    # Pairs first: a malformed file fails before anything is written or loaded.
    pairs = offline_pairs(cfg.limit or 200, cfg.seed) if cfg.pairs == "offline" else load_pairs(cfg.pairs, cfg.limit)
    resolved = {**resolve_loading(cfg.device, "auto", cfg.load_in_4bit), "data": runs.fingerprint(pairs)}
    runs.check_run_folder(out, cfg, RESUMABLE, resolved, cfg.max_steps)  # a used folder, or a changed run: refused
    train_pairs, eval_pairs = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)

    load_in_4bit = resolved["load_in_4bit"]
    runs.seed_everything(cfg.seed)  # the new score head is drawn at load time
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, num_labels=1, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, load_in_4bit=load_in_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing, device=cfg.device)
    pad_id = model.config.pad_token_id  # sequence_scores reads the last token that is not this id
    if not any(p.requires_grad and "score" in n and "lora" not in n for n, p in model.named_parameters()):
        raise RuntimeError("the score head is frozen: the reward model would keep its random head "
                           "(load_model_and_tokenizer should put 'score' in modules_to_save)")

    string_pair = next((p for p in pairs if not isinstance(p["chosen"], list)), None)
    if string_pair is not None and getattr(tokenizer, "chat_template", None):  # scorers.policy_prompt's form
        raise data.DataError(f"{cfg.pairs}:{string_pair['line']}: a string-form pair for a model with a chat "
                             f"template: the scorers feed this reward model the chat form of the policy's prompt, "
                             f"so train it on conversational pairs (synthesize.py --pair-format conversational)")
    for p in train_pairs + eval_pairs:
        for side in ("chosen", "rejected"):
            p[f"{side}_ids"] = encode(tokenizer, p["prompt"], p[side], p.get("chat_template_kwargs"))
    train_pairs, eval_pairs = [[p for p in split if max(len(p["chosen_ids"]), len(p["rejected_ids"])) <= cfg.max_length]
                               for split in (train_pairs, eval_pairs)]  # dropped, never truncated
    dropped = len(pairs) - len(train_pairs) - len(eval_pairs)
    if not train_pairs:
        raise data.DataError(f"{cfg.pairs}: no training pairs left ({dropped} longer than --max-length "
                             f"{cfg.max_length}, {len(eval_pairs)} held out)")
    print(f"pairs: {len(train_pairs)} train, {len(eval_pairs)} held out, {dropped} dropped (> {cfg.max_length} tokens)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json", resolved=resolved)

    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    start_step, extra = runs.start_run(out, model, optimizer, [metrics_path])
    scheduler = runs.make_scheduler(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr_scheduler_type, start_step)

    B = cfg.per_device_train_batch_size
    pairs_per_step = B * cfg.gradient_accumulation_steps
    position = extra.get("position", 0)  # the data cursor, as in train_generator.py and train_dpo.py
    model.train()
    bar = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps, desc="reward model")
    for step in bar:
        t0 = time.time()
        optimizer.zero_grad(set_to_none=True)
        stats = []
        step_pairs = [train_pairs[i] for i in runs.epoch_order(len(train_pairs), cfg.seed, position, pairs_per_step)]
        position += pairs_per_step
        for micro in range(cfg.gradient_accumulation_steps):
            batch = step_pairs[micro * B:(micro + 1) * B]
            # ---- score: chosen and rejected sides of B pairs in one forward of 2B rows ----
            scores = score_rows(model, [p["chosen_ids"] for p in batch] + [p["rejected_ids"] for p in batch], pad_id)
            chosen, rejected = scores[:len(batch)], scores[len(batch):]  # (B,), (B,)
            # ---- loss: BT + centring, mean over pairs; / GA (equal micro-batches) = mean over the step's pairs ----
            loss, s = losses.reward_model_loss(chosen, rejected, cfg.center_rewards_coefficient)
            if not loss.isfinite():
                raise RuntimeError(f"step {step + 1}: loss is {loss.item()} (scores {scores.tolist()})")
            (loss / cfg.gradient_accumulation_steps).backward()
            stats.append({"loss": loss.item(), **s})
        # ---- update ----
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()

        row = {"step": step + 1, "epoch": round(position / len(train_pairs), 4),
               **{k: sum(d[k] for d in stats) / len(stats) for k in stats[0]},
               "grad_norm": grad_norm.item(), "lr": lr, "step_time_s": round(time.time() - t0, 3)}
        if eval_pairs and ((cfg.eval_steps and (step + 1) % cfg.eval_steps == 0) or step + 1 == cfg.max_steps):
            ev = pair_stats(*score_pairs(model, eval_pairs, pad_id, cfg.per_device_eval_batch_size),
                            cfg.center_rewards_coefficient)
            row.update({f"eval/{k}": v for k, v in ev.items()})
        data.append_jsonl(metrics_path, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}", score=f"{row['score_mean']:+.2f}",
                        margin=f"{row['margin_mean']:+.2f}", gnorm=f"{row['grad_norm']:.2f}", lr=f"{lr:.1e}",
                        **({"eval_acc": f"{row['eval/accuracy']:.2f}"} if "eval/accuracy" in row else {}))
        if (cfg.save_steps and (step + 1) % cfg.save_steps == 0) or step + 1 == cfg.max_steps:  # always one at the end
            runs.save_checkpoint(out, step + 1, model, tokenizer, optimizer, scheduler,
                                 extra={"position": position})
    bar.close()

    # ---- save: the adapter, and the merged plain model ----
    save_atomic(model, tokenizer, out / "adapter")
    del model, optimizer, scheduler, params
    gc.collect()
    torch.cuda.empty_cache()  # a no-op without CUDA
    # A 4-bit base cannot be merged: reload it unquantized, apply the adapter, merge, save.
    merged, tokenizer = load_model_and_tokenizer(str(out / "adapter"), num_labels=1, device=cfg.device)
    merged = merged.merge_and_unload()
    merged.config.pad_token_id = pad_id  # the sequence-classification rule needs it in config.json
    save_atomic(merged, tokenizer, out / "final")

    # ---- evaluate the saved model: accuracy, mean score, score distributions ----
    summary = {"steps": max(start_step, cfg.max_steps), "center_rewards_coefficient": cfg.center_rewards_coefficient,
               "pairs": {"train": len(train_pairs), "eval": len(eval_pairs), "dropped_too_long": dropped}}
    hist, samples = {}, []
    for name, split in (("eval", eval_pairs), ("train", train_pairs)):
        if not split:
            summary[name] = None
            continue
        chosen, rejected = score_pairs(merged, split, pad_id, cfg.per_device_eval_batch_size)
        summary[name] = {"pairs": len(split), **pair_stats(chosen, rejected, cfg.center_rewards_coefficient),
                         "chosen_mean": chosen.mean().item(), "rejected_mean": rejected.mean().item(),
                         "score_abs_mean": torch.cat([chosen, rejected]).abs().mean().item(),
                         "accuracy_ci95": wilson_interval(int((chosen > rejected).sum()), len(split))}
        hist["held-out" if name == "eval" else "train"] = (chosen, rejected)
        groups = by_group(split)
        if len(groups) > 1:  # e.g. synthesize.py's negative sources: which kinds of negatives it tells apart
            summary[f"{name}_by_group"] = {
                g: {"pairs": len(idx), "accuracy": (chosen[idx] > rejected[idx]).float().mean().item(),
                    "margin_mean": (chosen[idx] - rejected[idx]).mean().item()} for g, idx in groups.items()}
        if name == "eval":
            samples = [{**{k: v for k, v in p.items() if k not in ("chosen_ids", "rejected_ids")}, "chosen_score": c,
                        "rejected_score": r} for p, c, r in zip(split, chosen.tolist(), rejected.tolist())]
    data.write_jsonl(out / "samples.jsonl", samples)
    plot_score_hist(hist, out / "plots" / "score_hist.png")
    runs.plot_metrics(metrics_path, out / "plots", {  # one PNG per panel
        "loss": ["loss", "eval/loss"], "accuracy": ["accuracy", "eval/accuracy"], "optim": ["grad_norm"], "lr": ["lr"],
        "scores": ["score_mean", "margin_mean", "eval/score_mean", "eval/margin_mean"]})
    data.write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_report(out, cfg, summary)
    ev = summary["eval"] or summary["train"]
    print(f"{'held-out' if summary['eval'] else 'train'}: accuracy {ev['accuracy']:.3f}, mean score "
          f"{ev['score_mean']:+.3f}, margin {ev['margin_mean']:+.3f}")
    print(f"done: {out} (final reward model {out / 'final'}, adapter {out / 'adapter'}, report {out / 'report.md'})")
    return summary


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
