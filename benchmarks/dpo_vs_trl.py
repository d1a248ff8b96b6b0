"""One DPO training step: train_dpo.py's loop vs TRL 1.16's DPOTrainer, same settings.

Both sides: the same model folder, the same pairs file (4 pairs in synthesize.py's conversational
format, each side at most --max-length 256 tokens prompt + completion), one micro-batch of 4
pairs (8 rows: chosen and rejected in one forward), LoRA r16 / alpha 32 / dropout 0 on the same 7
projections, beta 0.1, sigmoid loss, reference = the adapter turned off and computed every step
(no precomputed reference), AdamW, fp32 on CPU, gradient checkpointing as chosen (on by default:
both tools' default). The pairs are close, as PNS pairs are: the rejected completion is the
chosen one with its final number changed; the completions are offline worked solutions padded
with a check paragraph to fill the length budget.

Timing, wall and CPU seconds (benchmarks/_common.py PhaseTimer): ours = from the `collate` call
that opens a step (one micro-batch per step) to the next one (the last step ends at the final
checkpoint), inside train_dpo.main() run unchanged with --max-steps (its module globals
`collate`, `sequence_logps` and `save_checkpoint` are wrapped; metrics.jsonl's
`seconds_per_step` is kept alongside); TRL = a TrainerCallback around each optimizer step, with
its (peft) model's forward wrapped. Phases: `ref_fwd` (the no-grad forward: the reference),
`policy_fwd` (the forward with gradient), `backward+opt` = the rest (backward, clipping, AdamW,
collation, logging). The first step of each run is a warm-up, not counted. Each side runs in a
fresh process, alternating (benchmarks/_common.py also says how memory is measured).

    python benchmarks/dpo_vs_trl.py                        # embedded SmolLM2-135M, 2 repeats x 3 steps
    python benchmarks/dpo_vs_trl.py --tiny --repeats 3
    python benchmarks/dpo_vs_trl.py --repeats 1 --no-gradient-checkpointing

Measured on this 2-core CPU (load average ~1, the default `python benchmarks/dpo_vs_trl.py`:
SmolLM2-135M, 4 pairs of ~250 tokens, gradient checkpointing on; medians of wall s, CPU s in
brackets, 2 repeats x 2 counted steps):

                        ours          TRL           ours/TRL
    step                23.1 (44.8)   27.3 (52.4)   0.85x (0.85x)
      ref_fwd            4.7 (9.2)     6.2 (11.8)   0.77x
      policy_fwd         5.6 (11.0)    6.3 (12.2)   0.88x
      backward+opt      12.7 (24.4)   14.9 (28.5)   0.85x
    step working memory  2776 MB       4368 MB      0.64x
    process peak RSS     3229 MB       4939 MB      0.65x

Where the difference comes from: the mechanism grpo_vs_trl.py's docstring measured (not split
further here): our log-prob forward sends only the completion positions through the LM head
(`logits_to_keep`) and log-softmaxes one row at a time, where TRL 1.16 on CPU projects every
position (prompt included) over the 49152-token vocabulary; the backward saves the same head
work again. Memory: TRL materialises the logits of all
positions at once (8 x 256 x 49152 fp32 = 403 MB per tensor, several alive in the backward).
Not a difference: the reference is the adapter turned off on both sides, computed every step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (StepMeter, alternate, is_grad_phase, emit, memory_rows, model_path,  # noqa: E402
                     print_table, time_rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, folder or Hub id (default: the embedded model)")
    p.add_argument("--tiny", action="store_true", help="use the tiny random 2-layer Llama instead of --model")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated (default 2)")
    p.add_argument("--steps", type=int, default=3, help="training steps per run; the first is a warm-up (default 3)")
    p.add_argument("--pairs", type=int, default=4, help="pairs per step (one micro-batch; default 4)")
    p.add_argument("--max-length", type=int, default=256, help="prompt + completion tokens per side (default 256)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs-file", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_pairs(path: Path, model: str, n: int, max_length: int) -> dict:
    """n close pairs in synthesize.py's format whose longer side fills max_length - 2 tokens
    (TRL's completion carries one more token than ours: the newline after the end-of-turn)."""
    from transformers import AutoTokenizer

    import synthesize
    from pns_mini.data import load_problems

    tok = AutoTokenizer.from_pretrained(model)
    check = (" Check: going back over each step, every quantity was read from the question and each"
             " operation was done in order, so the result stands.")
    lengths = []
    pair_cfg = types.SimpleNamespace(pair_format="conversational", enable_thinking=False)
    with open(path, "w", encoding="utf-8") as f:
        for p in load_problems("offline", limit=n):
            gold, wrong = p["gold"], str(int(p["gold"]) + 1)
            steps, final = p["solution"].rsplit("\n", 1)
            fields = synthesize.messages(pair_cfg, tok, p["question"], "", "")
            prompt_len = len(tok(tok.apply_chat_template(fields["prompt"], tokenize=False, add_generation_prompt=True),
                                 add_special_tokens=False)["input_ids"])
            body = steps
            while True:  # add check sentences while the longer side stays within the budget
                longer = body + check
                n_tokens = len(tok(longer + "\n" + final.replace(gold, wrong), add_special_tokens=False)["input_ids"])
                if prompt_len + n_tokens + 2 > max_length:
                    break
                body = longer
            chosen, rejected = body + "\n" + final, body + "\n" + final.replace(f"{{{gold}}}", f"{{{wrong}}}")
            row = {"id": p["id"], **synthesize.messages(pair_cfg, tok, p["question"], chosen, rejected),
                   "gold": gold, "chosen_answer": gold, "rejected_answer": wrong, "source": "bench"}
            f.write(json.dumps(row) + "\n")
            lengths.append(prompt_len + len(tok(rejected, add_special_tokens=False)["input_ids"]) + 1)
    return {"max_tokens": max(lengths), "mean_tokens": sum(lengths) / len(lengths)}


# ---------------------------------------------------------------------------------------------
# Worker: ours (train_dpo.main, unchanged; its module globals wrapped for timing)
# ---------------------------------------------------------------------------------------------
def worker_ours(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    import train_dpo

    meter = StepMeter(a.steps)
    train_dpo.collate = meter.opens_step(train_dpo.collate)  # one micro-batch per step: collate opens it
    train_dpo.save_checkpoint = meter.ends_run(train_dpo.save_checkpoint)
    train_dpo.sequence_logps = meter.timer.wrap(train_dpo.sequence_logps, is_grad_phase)
    with tempfile.TemporaryDirectory() as out:
        cfg = train_dpo.Config(
            pairs=a.pairs_file, model=model_path(a.model, a.tiny), output_dir=out, seed=a.seed,
            max_length=a.max_length, loss_type="sigmoid", beta=a.beta, learning_rate=5e-6,
            per_device_train_batch_size=a.pairs, gradient_accumulation_steps=1, max_steps=a.steps, warmup_steps=0,
            lr_scheduler_type="constant", load_in_4bit=False, lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
            lora_dropout=0.0, gradient_checkpointing=a.gradient_checkpointing, device="cpu", dtype="fp32",
            save_steps=10**6)
        result = train_dpo.main(cfg)
    if result["counts"]["pairs_kept"] != a.pairs:
        raise SystemExit(f"ours kept {result['counts']['pairs_kept']} of {a.pairs} pairs: lower the pair length")
    return {**meter.result(), "metrics_step_s": [r["seconds_per_step"] for r in result["metrics"]]}


# ---------------------------------------------------------------------------------------------
# Worker: TRL's DPOTrainer with the same settings
# ---------------------------------------------------------------------------------------------
def worker_trl(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pns_mini.modeling import LORA_TARGETS

    path = model_path(a.model, a.tiny)
    meter = StepMeter(a.steps)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
            logging_steps=1, max_steps=a.steps, seed=a.seed, model_init_kwargs={"dtype": torch.float32},
            per_device_train_batch_size=a.pairs, gradient_accumulation_steps=1, max_length=a.max_length,
            beta=a.beta, loss_type=["sigmoid"], learning_rate=5e-6, lr_scheduler_type="constant", warmup_steps=0,
            max_grad_norm=1.0, gradient_checkpointing=a.gradient_checkpointing, dataloader_num_workers=0)
        trainer = DPOTrainer(
            model=path, args=args, train_dataset=load_dataset("json", data_files=a.pairs_file, split="train"),
            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[meter.trl_callback()],
            peft_config=LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0,
                                   target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        # TRL calls its (peft) model twice per step, policy then reference: time each call
        trainer.model.forward = meter.timer.wrap(trainer.model.forward, is_grad_phase)
        trainer.train()
    return meter.result()


# ---------------------------------------------------------------------------------------------
# Parent: write the pairs, alternate the workers, print the table
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    a = parse_args(argv)
    if a.worker:
        emit((worker_ours if a.worker == "ours" else worker_trl)(a))
        return
    path = model_path(a.model, a.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = Path(tmp) / "pairs.jsonl"
        sizes = write_pairs(pairs_file, path, a.pairs, a.max_length)
        model = "tiny random Llama (2 layers)" if a.tiny else a.model
        print(f"DPO step: {model}, {a.pairs} pairs (longer side {sizes['mean_tokens']:.0f} tokens on average, "
              f"max {sizes['max_tokens']}), LoRA r{a.lora_r}, beta {a.beta}, sigmoid, gradient checkpointing "
              f"{'on' if a.gradient_checkpointing else 'off'}, {a.threads} threads, {a.repeats} repeats x {a.steps} steps")
        argv = [f"--model={a.model}", f"--steps={a.steps}", f"--pairs={a.pairs}", f"--max-length={a.max_length}",
                f"--lora-r={a.lora_r}", f"--beta={a.beta}", f"--threads={a.threads}", f"--seed={a.seed}",
                f"--pairs-file={pairs_file}",
                "--gradient-checkpointing" if a.gradient_checkpointing else "--no-gradient-checkpointing"]
        if a.tiny:
            argv.append("--tiny")
        res = alternate(str(Path(__file__).resolve()), argv, a.repeats)
    ours, trl = res["ours"], res["trl"]
    rows = time_rows(ours, trl, ("ref_fwd", "policy_fwd")) + memory_rows(ours, trl)
    print_table("medians over repeats and steps (the first step of each run is not counted)", rows,
                "step working memory = sampled peak RSS during the steps - RSS when the first step began")


if __name__ == "__main__":
    main()
