"""One GRPO training step: train_generator.py's loop vs TRL 1.16's GRPOTrainer, same settings.

Both sides: the same model folder, 2 prompts x 4 samples (num_generations), max_completion_length
64, temperature 1, top_p 1, top_k off, LoRA r16 / alpha 32 / dropout 0 on the same 7 projections
(modeling.LORA_TARGETS), beta 0.04 (so both run a reference pass, the adapter turned off),
loss_type dapo, one micro-batch of 8 rows, num_iterations 1, AdamW, fp32 on CPU, gradient
checkpointing as chosen (on by default: both tools' default), and the same reward: our gated
composite on the torch-free components only (format + accuracy; reward-model and judge weights
0), i.e. train_generator.py's `--reward-weights format=0.5,accuracy=1,reward_model=0,judge=0` and,
for TRL, `trl_rewards.trl_reward_functions(..., composite=True)` with the same weights, so scorer
costs do not dominate. Problems: the offline generator (both sides draw from the same 200).

Timing, wall and CPU seconds (benchmarks/_common.py PhaseTimer): ours = from the rollout call
that opens a step to the next one (the last step ends at the final checkpoint), inside
train_generator.main() run unchanged with --max-steps (its module globals `sample`,
`rewards.score_completions`, `token_logprobs` and `save_checkpoint` are wrapped; the
metrics.jsonl `time/step` is kept alongside); TRL = a TrainerCallback around each optimizer step,
with its `_generate`, `_calculate_rewards` and `_get_per_token_logps_and_entropies` wrapped. The
phases: `generate` (sampling), `score` (the reward), `ref_fwd` (no-grad log-prob passes: the
reference), `policy_fwd` (the forward that carries the gradient), `backward+opt` = the rest
(backward, clipping, AdamW, logging and each side's bookkeeping). The first step of each run is
a warm-up, not counted. Each side runs in a fresh process, alternating (benchmarks/_common.py
also says how memory is measured). Sampling is random, so completion lengths differ between the
sides: the table prints them (and the prompt lengths) next to the times.

    python benchmarks/grpo_vs_trl.py                       # embedded SmolLM2-135M, 2 repeats x 2 steps
    python benchmarks/grpo_vs_trl.py --tiny --repeats 3    # the tiny random Llama: plumbing overheads
    python benchmarks/grpo_vs_trl.py --repeats 1 --steps 2 --no-gradient-checkpointing

Measured on this 2-core CPU (load average ~1, `--repeats 2 --steps 2`, SmolLM2-135M, gradient
checkpointing on; medians of wall s, CPU s in brackets):

                        ours          TRL           ours/TRL
    step                36.5 (71.1)   43.9 (84.9)   0.83x (0.84x)
      generate          18.2 (35.2)   17.7 (34.2)   1.03x  same HF generate, KV cache, top_k off
      ref_fwd            4.2 (8.1)     5.1 (10.0)   0.82x
      policy_fwd         4.6 (9.1)     6.4 (12.4)   0.73x
      backward+opt       9.5 (18.6)   14.7 (28.3)   0.66x
    step working memory  2760 MB       4401 MB      0.63x
    process peak RSS     3213 MB       4977 MB      0.65x
(prompt 184.5 tokens on both sides: the one-shot data.prompt_messages; completions 64 vs 62.)
Under heavy machine load (load average ~10) an earlier run gave 0.97x in time: wall time then
mostly measures waiting for a core.

A rerun of the same command a day later (load ~1, same code; this machine ran everything ~30%
slower that day) gave a different whole-step answer:

                        ours          TRL           ours/TRL
    step                49.8 (88.5)   46.7 (90.2)   1.07x (0.98x)
      generate          25.7 (43.9)   18.5 (36.0)   1.39x (1.22x)
      ref_fwd            4.8 (9.2)     6.1 (11.9)   0.78x
      policy_fwd         5.8 (10.8)    6.6 (12.7)   0.87x
      backward+opt      13.5 (24.7)   15.4 (29.6)   0.87x
    step working memory  2849 MB       4245 MB      0.67x
    process peak RSS     3301 MB       4817 MB      0.69x

The update phases and memory reproduce; sampling does not: our generate took 1.2x TRL's CPU
seconds in all four counted steps (43.5-44.2 vs 35.8-36.1 CPU s for the same 64 decode steps of
8 rows), where the first run had it level. Both sides call transformers' generate on a peft
model; ours puts the model in eval mode and passes a fresh GenerationConfig (top_k=0, no
top-p/temperature warpers at 1.0), TRL its own generation kwargs. A generate-only A/B in one
process (the same LoRA model with checkpointing on, the same 8 prompt rows, 64 tokens, two
alternating repeats) found the settings level: our sample() 19.7-20.3 s, transformers' generate
with TRL's GenerationConfig 18.6-20.4 s (model in train or eval mode). So the run-2 gap is not
the generation settings; still unexplained (suspects: process state inside
train_generator.main, such as the grader's worker process or the allocator after a backward).
Treat the whole-step GRPO ratio as 0.83-1.07x until that is found.

Where the difference comes from (measured, not guessed):
- Sampling is half of the step and the same on both sides (both call transformers' generate
  with a KV cache on the same prompts), so the whole-step gain is bounded by the update phase.
- The log-prob forwards: TRL 1.16's fused LM head (trl/trainer/utils.py add_fused_lm_head)
  projects EVERY position through the LM head on CPU (its compact path needs Triton on
  CUDA/XPU) and also computes the per-token entropy; we ask for the last T+1 logits only
  (`logits_to_keep`) and log-softmax one row at a time. For these 8 rows of 184 + 64 tokens a
  no-grad forward measured (same process, same weights): transformer body 4.3 s; our LM head
  +0.3 s; TRL's +1.9 s. That is 8 x 247 positions x 49152 vocabulary through the head instead
  of 8 x 65 (2 d V = 57 MFLOP per position, +82 GFLOP on ~420 GFLOP of body) plus the extra
  full-vocabulary passes for entropy and log-softmax.
- backward+opt: the same head difference in the backward (TRL's chunked log-prob backward
  covers all positions), on top of the recompute of gradient checkpointing that both do.
- Memory: TRL's fused head materialises the logits of all positions in one chunk (its chunk
  is 32768 positions: here all 1976 at once, 1976 x 49152 fp32 = 388 MB per tensor, several
  alive in backward); ours holds 8 x 65 positions and one fp32 row at a time.
- Not a difference: the reference pass (both: adapter off, no grad, once per step), the reward
  (the same function), padding (both left-pad prompts; TRL passes no position ids, which RoPE
  makes equivalent, see tests/test_trl_parity.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (StepMeter, alternate, is_grad_phase, emit, median_over, memory_rows,  # noqa: E402
                     model_path, print_table, time_rows)

REWARD_WEIGHTS = {"format": 0.5, "accuracy": 1.0, "reward_model": 0.0, "judge": 0.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, folder or Hub id (default: the embedded model)")
    p.add_argument("--tiny", action="store_true", help="use the tiny random 2-layer Llama instead of --model")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated (default 2)")
    p.add_argument("--steps", type=int, default=2, help="training steps per run; the first is a warm-up (default 2)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (default 2)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Worker: ours (train_generator.main, unchanged; its module globals wrapped for timing)
# ---------------------------------------------------------------------------------------------
def worker_ours(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    import train_generator as tg

    meter, prompt_tokens = StepMeter(a.steps), []
    timed_sample = meter.opens_step(meter.timer.wrap(tg.sample, lambda *_: "generate"))

    def sample_and_count(*args, **kwargs):  # the rollout is the first thing a step does
        out = timed_sample(*args, **kwargs)
        prompt_tokens.append(out.prompt_mask.sum(-1).float().mean().item())
        return out

    tg.sample, tg.save_checkpoint = sample_and_count, meter.ends_run(tg.save_checkpoint)
    tg.rewards.score_completions = meter.timer.wrap(tg.rewards.score_completions, lambda *_: "score")
    tg.token_logprobs = meter.timer.wrap(tg.token_logprobs, is_grad_phase)  # also what no_grad_logps calls
    with tempfile.TemporaryDirectory() as out:
        cfg = tg.Config(
            model=model_path(a.model, a.tiny), output_dir=out, problems="offline", seed=a.seed, max_steps=a.steps,
            prompts_per_step=a.prompts, num_generations=a.num_generations,
            max_completion_length=a.max_completion_length, temperature=1.0, top_p=1.0,
            reward_weights=",".join(f"{k}={v}" for k, v in REWARD_WEIGHTS.items()), beta=a.beta, loss_type="dapo",
            per_device_train_batch_size=a.prompts * a.num_generations, warmup_steps=0, lr_scheduler_type="constant",
            gradient_checkpointing=a.gradient_checkpointing, load_in_4bit=False, lora_r=a.lora_r,
            lora_alpha=2 * a.lora_r, lora_dropout=0.0, device="cpu", dtype="fp32", save_steps=10**6,
            log_samples_steps=10**6)
        rows = tg.main(cfg)["metrics"]
    return {**meter.result(), "metrics_step_s": [r["time/step"] for r in rows],
            "tokens": [r["length/mean"] for r in rows], "prompt_tokens": prompt_tokens}


# ---------------------------------------------------------------------------------------------
# Worker: TRL's GRPOTrainer with the same settings and reward
# ---------------------------------------------------------------------------------------------
def worker_trl(a) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pns_mini import trl_rewards
    from pns_mini.data import load_problems, prompt_messages
    from pns_mini.modeling import LORA_TARGETS

    path = model_path(a.model, a.tiny)
    meter = StepMeter(a.steps)

    dataset = Dataset.from_list([
        {"prompt": prompt_messages(p["question"]), "question": p["question"], "gold": p["gold"]}
        for p in load_problems("offline")])  # the messages data.format_prompt templates: the same prompt
    [composite], _ = trl_rewards.trl_reward_functions(weights=REWARD_WEIGHTS, composite=True)
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
            logging_steps=1, max_steps=a.steps, seed=a.seed, model_init_kwargs={"dtype": torch.float32},
            per_device_train_batch_size=a.prompts * a.num_generations, gradient_accumulation_steps=1,
            num_generations=a.num_generations, max_completion_length=a.max_completion_length, temperature=1.0,
            top_p=1.0, top_k=0, beta=a.beta, loss_type="dapo", num_iterations=1, scale_rewards="group",
            learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            gradient_checkpointing=a.gradient_checkpointing, reward_weights=[1.0], dataloader_num_workers=0)
        trainer = GRPOTrainer(
            model=path, reward_funcs=[composite], args=args, train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[meter.trl_callback()],
            peft_config=LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0,
                                   target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        prompt_tokens, generate = [], meter.timer.wrap(trainer._generate, lambda *_: "generate")

        def timed_generate(prompts):
            out = generate(prompts)  # (prompt_ids, completion_ids, ...): lists of token ids
            prompt_tokens.append(sum(map(len, out[0])) / len(out[0]))
            return out
        trainer._generate = timed_generate
        trainer._calculate_rewards = meter.timer.wrap(trainer._calculate_rewards, lambda *_: "score")
        trainer._get_per_token_logps_and_entropies = meter.timer.wrap(
            trainer._get_per_token_logps_and_entropies, is_grad_phase)
        trainer.train()
    logs = [row for row in trainer.state.log_history if "completions/mean_length" in row]
    return {**meter.result(), "tokens": [row["completions/mean_length"] for row in logs],
            "prompt_tokens": prompt_tokens}


# ---------------------------------------------------------------------------------------------
# Parent: alternate the workers, print the table
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    a = parse_args(argv)
    if a.worker:
        emit((worker_ours if a.worker == "ours" else worker_trl)(a))
        return
    model = "tiny random Llama (2 layers)" if a.tiny else a.model
    model_path(a.model, a.tiny)  # convert / build once, outside the timed workers
    print(f"GRPO step: {model}, {a.prompts} prompts x {a.num_generations} samples x <= {a.max_completion_length} "
          f"tokens, LoRA r{a.lora_r}, beta {a.beta}, dapo, gradient checkpointing "
          f"{'on' if a.gradient_checkpointing else 'off'}, {a.threads} threads, {a.repeats} repeats x {a.steps} steps")
    argv = [f"--model={a.model}", f"--repeats={a.repeats}", f"--steps={a.steps}", f"--prompts={a.prompts}",
            f"--num-generations={a.num_generations}", f"--max-completion-length={a.max_completion_length}",
            f"--lora-r={a.lora_r}", f"--beta={a.beta}", f"--threads={a.threads}", f"--seed={a.seed}",
            "--gradient-checkpointing" if a.gradient_checkpointing else "--no-gradient-checkpointing"]
    if a.tiny:
        argv.append("--tiny")
    res = alternate(str(Path(__file__).resolve()), argv, a.repeats)
    ours, trl = res["ours"], res["trl"]
    rows = time_rows(ours, trl, ("generate", "score", "ref_fwd", "policy_fwd"))
    rows.append(("prompt length, tokens", median_over(ours, "prompt_tokens"), median_over(trl, "prompt_tokens")))
    rows.append(("completion length, tokens", median_over(ours, "tokens"), median_over(trl, "tokens")))
    rows += memory_rows(ours, trl)
    print_table("medians over repeats and steps (the first step of each run is not counted)", rows,
                "step working memory = sampled peak RSS during the steps - RSS when the first step began")


if __name__ == "__main__":
    main()
