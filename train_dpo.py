"""Stage 3 of PNS: DPO of a policy on (correct, plausible-wrong) preference pairs.

Reads   --pairs: a preference JSONL in TRL's format (one pair a line; other keys are ignored), either conversational,
        as synthesize.py writes it (prompt = messages, through the chat template; chosen / rejected = [an assistant
        message]), or string ({"prompt", "chosen", "rejected"}: a prompt holding a special token is used as it is, a
        plain one is the question and becomes data.format_prompt(question), as in evaluate.py). Each completion gets
        one EOS token, so the policy also learns to stop. --model: the base; --adapter: an optional starting LoRA.
Writes  --output-dir: config.json, samples.jsonl (the first pairs as tokenized), metrics.jsonl (a row
        per step, TRL's names), checkpoints/step-N/, ref_logps.pt (--precompute-ref-log-probs), final/
        (the adapter: `evaluate.py --adapter <output-dir>/final`), merged/ (--merge), plots/*.png, report.md.

Examples
    # CPU demo on the embedded model, pairs from synthesize.py (slow: 2-3 min per step on a busy 2-core CPU)
    python train_dpo.py --pairs runs/synthesize/pairs.jsonl --output-dir runs/dpo-demo --max-steps 8 --warmup-steps 0 \\
        --per-device-train-batch-size 2 --gradient-accumulation-steps 1 --learning-rate 5e-5 --no-gradient-checkpointing
    # one consumer GPU: QLoRA (4-bit is the default on CUDA), 16 pairs per step, RPO term on
    python train_dpo.py --pairs runs/synthesize/pairs.jsonl --model Qwen/Qwen2.5-Math-1.5B-Instruct --rpo-alpha 1.0 \\
        --output-dir runs/dpo-qwen --per-device-train-batch-size 4 --gradient-accumulation-steps 4 --merge
    # the same command + --resume continues a run; with a larger --max-steps it extends a finished one

Method choices and deviations
    - The paper (arXiv 2602.03516) trains the policy with DPO on PNS pairs, hyperparameters not public.
      TRL's defaults where a concept matches (beta 0.1, sigmoid, max_length 1024, max_grad_norm 1.0); LoRA lr 5e-6.
    - Sequence log-probs: SUMS over completion tokens (EOS included), as in DPO and TRL (TRL's ipo alone
      length-averages: design.md); both sides in one forward.
    - Reference: the model with its LoRA adapter off (no second copy), or log-probs computed once before training
      and cached (--precompute-ref-log-probs), which --adapter needs so that the starting adapter is the reference.
    - Pairs over max_length are dropped and counted, never truncated: that cuts off the answer telling them apart.
    - PNS pairs are close (few differing tokens), where plain DPO tends to push the chosen log-prob DOWN as the margin
      grows: we log `logps/chosen_vs_ref` (policy minus reference on this step's chosen: 0 at the start, no data
      noise), warn below -chosen_logp_drop_warning and offer --rpo-alpha (RPO's NLL on chosen, length-normalised
      per sequence; TRL averages over tokens).
    - CPU: fp32, no 4-bit by default (bitsandbytes dequantisation on CPU only costs time there).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pns_mini.config import check_flags, main_guard, save_config
from pns_mini.data import (ANSWER_INSTRUCTION, DataError, append_jsonl, chat_prompt, format_prompt, read_pairs,
                           write_atomic, write_jsonl)
from pns_mini.losses import DPO_LOSS_TYPES, dpo_loss, rpo_nll_loss
from pns_mini.modeling import (load_model_and_tokenizer, merge_and_save, reference_model, resolve_device,
                               resolve_loading, save_atomic, token_logprobs, trainable_parameters)
from pns_mini.runs import (check_run_folder, epoch_order, fingerprint, make_scheduler, plot_metrics, read_metrics,
                           save_checkpoint, seed_everything, start_run)

TIMING_KEYS = ("seconds_per_step",)  # the only metrics that differ between identical runs
# What --resume may change: the run's length, and what is saved or logged; anything else is a new run.
RESUMABLE = ("max_steps", "num_train_epochs", "save_steps", "merge", "chosen_logp_drop_warning", "device")


@dataclass
class Config:
    pairs: str = ""
    """Preference JSONL (prompt, chosen, rejected), conversational or string form; required."""
    model: str = "smollm2-135m"
    """Policy base: Hub id, local folder or alias."""
    adapter: str | None = None
    """Starting LoRA adapter folder (e.g. SFT); needs --precompute-ref-log-probs (reference = it)."""
    output_dir: str = "runs/dpo"
    """Run folder (config, metrics, checkpoints, final adapter, plots, report)."""
    seed: int = 0
    """Seed of the LoRA init, the data order and dropout."""
    max_length: int = 1024
    """Max prompt + completion tokens of either side of a pair; longer pairs are dropped (256-4096)."""
    max_completion_length: int | None = None
    """Max completion tokens (either side); longer pairs are dropped. none = only max_length."""
    chat_template_for_strings: bool = True
    """Wrap a plain-string prompt into data.format_prompt (as evaluate.py); --no-... uses it as it is."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) | ipo | hinge (SLiC)."""
    beta: float = 0.1
    """DPO temperature / KL strength (0.01-0.5; IPO: its tau)."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels, conservative DPO (sigmoid only; 0-0.3)."""
    rpo_alpha: float | None = None
    """Weight of the RPO NLL term on chosen (none/0 = off; 1.0 in the RPO paper)."""
    precompute_ref_log_probs: bool = False
    """Compute reference log-probs once before training, cached in <output-dir>/ref_logps.pt."""
    learning_rate: float = 5e-6
    """Peak AdamW learning rate of the LoRA weights (1e-6 - 5e-5)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0-0.1)."""
    per_device_train_batch_size: int = 4
    """Pairs per forward pass (2x rows: chosen and rejected); lower it when memory runs out."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step; pairs per step = this x per_device_train_batch_size."""
    num_train_epochs: float = 1.0
    """Passes over the kept pairs (ignored when --max-steps is given)."""
    max_steps: int | None = None
    """Optimizer steps; overrides num_train_epochs."""
    warmup_steps: int = 10
    """Linear LR warmup steps (0-100)."""
    lr_scheduler_type: str = "cosine"
    """cosine (to 0 at the last step) | constant (after warmup)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (<= 0: no clipping, the norm is still logged)."""
    load_in_4bit: bool | None = None
    """QLoRA: 4-bit NF4 base. Default: on CUDA yes, on CPU no."""
    lora_r: int = 16
    """LoRA rank of a fresh adapter (4-64)."""
    lora_alpha: int = 32
    """LoRA scale numerator (usually 2 x lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input (0-0.1)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward: less memory, about 1/3 more time."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16."""
    save_steps: int = 50
    """Checkpoint every N steps (and always at the end)."""
    chosen_logp_drop_warning: float | None = 2.0
    """Warn when logps/chosen falls this many nats below the reference (none = never)."""
    merge: bool = False
    """Also write <output-dir>/merged: the adapter merged into an unquantized base."""
    resume: bool = False
    """Continue from the latest checkpoint in --output-dir."""

    def __post_init__(self):
        if not self.pairs:
            raise ValueError("--pairs FILE is required (a preference JSONL, e.g. from synthesize.py)")
        check_flags(self, {1: ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "max_length",
                               "max_steps"), 0: ("warmup_steps", "rpo_alpha")},
                    {"loss_type": DPO_LOSS_TYPES, "lr_scheduler_type": ("cosine", "constant")})
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise ValueError("--beta must be > 0 and --label-smoothing in [0, 0.5)")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("--label-smoothing applies to --loss-type sigmoid only")
        if self.num_train_epochs <= 0:
            raise ValueError(f"--num-train-epochs must be > 0, got {self.num_train_epochs}")
        if self.adapter is None and self.lora_r < 1:
            raise ValueError("--lora-r must be >= 1: the policy is a LoRA adapter, the reference the base")
        if self.adapter is not None and not self.precompute_ref_log_probs:
            raise ValueError("--adapter needs --precompute-ref-log-probs: the reference must be the "
                             "starting adapter, not the base with the adapter off")


def prompt_string(prompt, tokenizer, chat_template_for_strings: bool, template_kwargs: dict | None = None) -> str:
    """template_kwargs: the row's `chat_template_kwargs` (TRL's field), so the prompt is templated as when sampled."""
    enable_thinking = bool((template_kwargs or {}).get("enable_thinking", False))
    if isinstance(prompt, list):  # conversational: the model's own chat template
        return chat_prompt(tokenizer, prompt, enable_thinking=enable_thinking)
    if any(tok in prompt for tok in tokenizer.all_special_tokens) or not chat_template_for_strings:
        return prompt  # already templated, or --no-chat-template-for-strings
    return format_prompt(tokenizer, prompt.strip().removesuffix(ANSWER_INSTRUCTION).strip(),
                         enable_thinking=enable_thinking)


def completion_ids(completion, tokenizer) -> list[int]:
    text = completion if isinstance(completion, str) else completion[0]["content"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def tokenize_pairs(rows: list[dict], tokenizer, cfg: Config) -> tuple[list[dict], dict]:
    """Token ids of each pair; pairs over max_length / max_completion_length are dropped, counted."""
    kept = []
    for row in rows:
        text = prompt_string(row["prompt"], tokenizer, cfg.chat_template_for_strings, row.get("chat_template_kwargs"))
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        c, r = completion_ids(row["chosen"], tokenizer), completion_ids(row["rejected"], tokenizer)
        n = max(len(c), len(r))
        if len(p) + n <= cfg.max_length and (cfg.max_completion_length is None or n <= cfg.max_completion_length):
            kept.append({"prompt": p, "chosen": c, "rejected": r, "line": row["line"]})
    counts = {"pairs_read": len(rows), "pairs_dropped_too_long": len(rows) - len(kept), "pairs_kept": len(kept),
              "forms": sorted({row["form"] for row in rows})}
    if not kept:
        raise DataError(f"{cfg.pairs}: all {len(rows)} pairs are longer than max_length={cfg.max_length} "
                        f"(max_completion_length={cfg.max_completion_length}); raise them")
    return kept, counts


def collate(pairs: list[dict], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B pairs -> 2B rows, chosen rows first then rejected: left-padded prompt + right-padded
    completion. Returns input_ids (2B, P+T), attention_mask (2B, P+T), completion_mask (2B, T)."""
    prompts = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    P, T = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((len(prompts), P + T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P], ids[i, P:P + len(c)] = torch.tensor(p), torch.tensor(c)
        mask[i, P - len(p):P + len(c)] = 1
    return ids.to(device), mask.to(device), mask[:, P:].to(device)


def sequence_logps(model, ids, mask, completion_mask) -> torch.Tensor:
    """(2B,) sum of per-token log-probs over each row's completion tokens (EOS included)."""
    logps = token_logprobs(model, ids, mask, completion_mask.shape[1])  # (2B, T) fp32
    return (logps * completion_mask).sum(-1)  # (2B,)


@torch.no_grad()
def reference_logps(model, pairs, cfg: Config, pad_id, device, key: str, path: Path) -> dict:
    """Reference log-probs of every kept pair (with --adapter: of the starting adapter, as no update has run yet),
    cached at `path` under `key` (pairs file hash + model + tokenization settings); another key's cache is redone."""
    if path.exists():
        cache = torch.load(path, map_location="cpu")
        if cache.get("key") == key:
            return cache
        tqdm.write(f"{path}: cached reference log-probs are for other pairs/settings; recomputing")
    was_training = model.training
    model.eval()  # no dropout: the reference is deterministic
    chosen, rejected, B = [], [], cfg.per_device_train_batch_size
    for start in tqdm(range(0, len(pairs), B), desc="reference log-probs", leave=False):
        batch, n = collate(pairs[start:start + B], pad_id, device), len(pairs[start:start + B])
        with nullcontext() if cfg.adapter else reference_model(model):
            ref = sequence_logps(model, *batch)
        chosen.append(ref[:n].float().cpu())
        rejected.append(ref[n:].float().cpu())
    model.train(was_training)
    cache = {"key": key, "chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}
    torch.save(cache, tmp := path.with_name(path.name + ".tmp"))
    os.replace(tmp, path)  # atomic: a half-written cache is never read
    return cache


def write_report(out: Path, cfg: Config, counts: dict, rows: list[dict], extra: dict) -> None:
    times = [r["seconds_per_step"] for r in rows]
    adapter = f" + adapter `{cfg.adapter}`" if cfg.adapter else ""
    merged = f", merged model: `{out / 'merged'}`" if cfg.merge else ""
    flagged = [r["step"] for r in rows if r.get("warning/chosen_logp_drop")]
    lines = ["# DPO run", "",
             f"- pairs: `{cfg.pairs}` ({', '.join(counts['forms'])} form): read {counts['pairs_read']}, "
             f"dropped as too long {counts['pairs_dropped_too_long']} (max_length {cfg.max_length}, "
             f"max_completion_length {cfg.max_completion_length}), kept {counts['pairs_kept']}",
             f"- model `{cfg.model}`{adapter}, loss {cfg.loss_type}, beta {cfg.beta}, rpo_alpha {cfg.rpo_alpha}, "
             f"reference {extra['reference']}",
             f"- steps {rows[-1]['step'] if rows else 0} x {extra['global_batch']} pairs, epochs "
             f"{rows[-1]['epoch'] if rows else 0:.2f}, seconds per step {sum(times) / max(1, len(times)):.2f} (mean)",
             f"- final adapter: `{out / 'final'}`{merged}"]
    if flagged:
        lines.append(f"- WARNING: logps/chosen fell more than {cfg.chosen_logp_drop_warning} nats below the "
                     f"reference at {len(flagged)} steps (first: step {flagged[0]}); consider --rpo-alpha 1.0")
    for name, row in (("First", rows[:1]), ("Last", rows[-1:])):
        lines += ["", f"## {name} metrics row", "", "```json", json.dumps(row[0] if row else {}, indent=1), "```"]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    metrics_path = out / "metrics.jsonl"
    rows = read_pairs(cfg.pairs)  # fail on a malformed file before the slow model load
    resolved = {**resolve_loading(cfg.device, cfg.dtype, cfg.load_in_4bit), "data": fingerprint(rows)}
    check_run_folder(out, cfg, RESUMABLE, resolved, cfg.max_steps)  # a used folder, or a changed run: refused

    # --- setup: policy = LoRA on a (4-bit) base, reference = adapter off ---
    seed_everything(cfg.seed)
    device, load_in_4bit = resolve_device(cfg.device), resolved["load_in_4bit"]
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, adapter=cfg.adapter, load_in_4bit=load_in_4bit, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, gradient_checkpointing=cfg.gradient_checkpointing,  # memory for time
        device=cfg.device, dtype=cfg.dtype, trainable=True)
    model.train()
    pairs, counts = tokenize_pairs(rows, tokenizer, cfg)
    B = cfg.per_device_train_batch_size
    pairs_per_step = B * cfg.gradient_accumulation_steps
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * len(pairs) / pairs_per_step))
    check_run_folder(out, cfg, RESUMABLE, resolved, total_steps)  # again, now that the epochs' steps are known
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json", resolved=resolved)
    sides = ("prompt", "chosen", "rejected")  # samples.jsonl: the first pairs as the model sees them
    write_jsonl(out / "samples.jsonl", ({"line": p["line"], **{k: tokenizer.decode(p[k]) for k in sides},
                                         **{f"{k}_tokens": len(p[k]) for k in sides}} for p in pairs[:3]))

    if cfg.warmup_steps >= total_steps:
        tqdm.write(f"note: warmup_steps={cfg.warmup_steps} >= {total_steps} steps: the LR never reaches its peak")
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    pad_id = tokenizer.pad_token_id

    ref_cache = None
    if cfg.precompute_ref_log_probs:  # before any update (and before a checkpoint is loaded)
        key_fields = {k: getattr(cfg, k) for k in ("model", "adapter", "dtype", "max_length", "max_completion_length",
                                                   "chat_template_for_strings")}
        key = fingerprint([resolved, key_fields])  # the pairs' content, how they are tokenized and loaded
        ref_cache = reference_logps(model, pairs, cfg, pad_id, device, key, out / "ref_logps.pt")

    step, extra = start_run(out, model, optimizer, [metrics_path])  # step 0, or the latest checkpoint's
    position = extra.get("position", extra.get("pairs_seen", 0))  # the data cursor (older runs: pairs_seen)
    if extra.get("num_pairs", len(pairs)) != len(pairs):
        raise DataError(f"{cfg.pairs}: {len(pairs)} pairs kept now, {extra['num_pairs']} when the checkpoint was "
                        f"saved: the data order would not continue; use the same pairs file")
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.lr_scheduler_type, step)
    warned = any(r.get("warning/chosen_logp_drop") for r in read_metrics(metrics_path))

    bar = tqdm(total=total_steps, initial=step, desc="dpo", dynamic_ncols=True)
    while step < total_steps:
        step += 1
        t0 = time.perf_counter()
        order = torch.tensor(epoch_order(len(pairs), cfg.seed, position, pairs_per_step))  # this step's pairs
        position += pairs_per_step
        sums = defaultdict(float)
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.gradient_accumulation_steps):
            idx = order[micro * B:(micro + 1) * B]  # (B,)
            ids, mask, completion_mask = collate([pairs[i] for i in idx], pad_id, device)

            # --- policy and reference log-probs: chosen and rejected in one forward ---
            logps = sequence_logps(model, ids, mask, completion_mask)  # (2B,)
            policy_chosen, policy_rejected = logps[:B], logps[B:]
            if ref_cache is not None:
                ref_chosen, ref_rejected = ref_cache["chosen"][idx].to(device), ref_cache["rejected"][idx].to(device)
            else:
                with torch.no_grad(), reference_model(model):  # adapter off = reference
                    ref = sequence_logps(model, ids, mask, completion_mask)  # (2B,)
                ref_chosen, ref_rejected = ref[:B], ref[B:]

            # --- DPO loss (+ RPO NLL on chosen), scaled: the accumulated gradient is the mean over the step's pairs ---
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type, cfg.label_smoothing)
            loss = losses.sum() / pairs_per_step
            if cfg.rpo_alpha:
                nll = rpo_nll_loss(policy_chosen, completion_mask[:B].sum(-1))  # mean over these B pairs
                loss = loss + cfg.rpo_alpha * nll * B / pairs_per_step
                sums["nll_loss"] += nll.item() * B / pairs_per_step
            if not torch.isfinite(loss):
                raise RuntimeError(f"step {step}: loss is {loss.item()} (pairs at lines "
                                   f"{[pairs[i]['line'] for i in idx]}); lower --learning-rate or use fp32/bf16")
            loss.backward()
            with torch.no_grad():
                sums["loss"] += loss.item()
                for name, value in (("rewards/chosen", chosen_rewards), ("rewards/rejected", rejected_rewards),
                                    ("rewards/margins", chosen_rewards - rejected_rewards),
                                    ("rewards/accuracies", (chosen_rewards > rejected_rewards).float()),
                                    ("logps/chosen", policy_chosen), ("logps/rejected", policy_rejected),
                                    ("logps/chosen_vs_ref", policy_chosen - ref_chosen)):
                    sums[name] += value.float().sum().item() / pairs_per_step

        # --- update ---
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()

        # --- log, warn, checkpoint ---
        row = {"step": step, "epoch": round(position / len(pairs), 4), **sums, "grad_norm": grad_norm.item(), "lr": lr}
        limit = cfg.chosen_logp_drop_warning
        row["warning/chosen_logp_drop"] = limit is not None and -row["logps/chosen_vs_ref"] > limit
        row["seconds_per_step"] = round(time.perf_counter() - t0, 3)
        append_jsonl(metrics_path, row)
        if row["warning/chosen_logp_drop"] and not warned:
            warned = True
            tqdm.write(f"WARNING step {step}: logps/chosen is {-row['logps/chosen_vs_ref']:.2f} nats below "
                       f"the reference on this step's pairs (margin {row['rewards/margins']:.3f}): DPO is "
                       f"lowering the likelihood of the correct solutions. Consider --rpo-alpha 1.0 "
                       f"(flag in metrics.jsonl: warning/chosen_logp_drop)")
        bar.set_postfix_str(f"loss {row['loss']:.4f} margin {row['rewards/margins']:.3f} "
                            f"acc {row['rewards/accuracies']:.2f} logp_c {row['logps/chosen']:.1f} "
                            f"logp_r {row['logps/rejected']:.1f} gn {row['grad_norm']:.2f} lr {lr:.1e} "
                            f"{row['seconds_per_step']:.1f}s"
                            + (" CHOSEN-LOGP-DROP" if row["warning/chosen_logp_drop"] else ""))
        bar.update(1)
        if step % cfg.save_steps == 0 or step == total_steps:
            save_checkpoint(out, step, model, tokenizer, optimizer, scheduler,
                            extra={"position": position, "num_pairs": len(pairs)})
    bar.close()

    # --- save, plot, report ---
    save_atomic(model, tokenizer, out / "final")
    if cfg.merge:  # a 4-bit base cannot be merged: reload it unquantized in the model dtype
        merged = load_model_and_tokenizer(str(out / "final"), device=cfg.device, dtype=cfg.dtype)
        merge_and_save(*merged, out / "merged")
    plot_metrics(metrics_path, out / "plots", {
        "loss": ["loss", "nll_loss"], "rewards": ["rewards/chosen", "rewards/rejected", "rewards/margins"],
        "logps": ["logps/chosen", "logps/rejected"], "logps_vs_ref": ["logps/chosen_vs_ref"],
        "accuracies": ["rewards/accuracies"], "grad_norm": ["grad_norm"]})
    metrics = read_metrics(metrics_path)
    write_report(out, cfg, counts, metrics, {"global_batch": pairs_per_step, "reference": (
        "precomputed (ref_logps.pt)" if ref_cache is not None else "adapter off, on the fly")})
    print(f"done: {out} (final adapter {out / 'final'}" + (f", merged model {out / 'merged'}" if cfg.merge else "")
          + f", report {out / 'report.md'})")
    return {"counts": counts, "metrics": metrics, "final": out / "final", "total_steps": total_steps}


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
