"""The scale-out path of docs/scale-out.md runs: TRL's GRPOTrainer on our reward functions and
TRL's DPOTrainer on a pairs file in synthesize.py's format, one optimizer step each on the tiny
random model, on CPU (use_cpu, fp32, no reporting).

- GRPO (stage 1): the reward functions come from trl_rewards.trl_reward_functions with their weights
  as GRPOConfig.reward_weights; the reward-model component gets a stand-in scorer (a pure
  function of the completion's length, so a random model's group has reward spread and the step
  a non-zero gradient), the judge is off, and the gated `pns_composite_reward` rides along with
  weight 0 (logged, not optimised). Checks: the step ran, TRL called our functions with the
  dataset's `question` and `gold` columns, logged every component under its name (a random model
  writes no \\boxed{}, so format 0 and composite = the malformed penalty), and the LoRA moved.
- DPO (stage 3): a pairs.jsonl row built with synthesize.messages plus the metadata columns
  synthesize.py writes; train_dpo.read_pairs accepts the same file; DPOTrainer's first loss is
  ln 2 (policy = reference: the fresh adapter's B is 0 and the reference is the adapter off),
  and the LoRA moved.
"""
import json
import math
import types

import pytest
import torch

pytest.importorskip("trl")

from pns_mini import rewards, trl_rewards  # noqa: E402
from pns_mini.data import load_problems, prompt_messages  # noqa: E402
from pns_mini.modeling import LORA_TARGETS  # noqa: E402


def lora_config(r=8):
    from peft import LoraConfig
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def cpu_args(**kw) -> dict:
    """The TrainingArguments every scale-out test shares: one CPU step, nothing saved or reported."""
    return dict(use_cpu=True, bf16=False, report_to=[], max_steps=1, logging_steps=1, save_strategy="no",
                disable_tqdm=True, gradient_checkpointing=False, seed=0, dataloader_num_workers=0, **kw)


def trainable_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def moved(model, before: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())]


def test_grpo_trainer_one_step_with_our_reward_functions(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    problems = load_problems("offline", limit=2)
    dataset = Dataset.from_list([
        {"prompt": prompt_messages(p["question"]), "question": p["question"], "gold": p["gold"]} for p in problems])

    seen_questions = []

    def length_scorer(questions, completions):  # stands in for scorers.RewardModelScorer: scores in [0, 1]
        seen_questions.extend(questions)
        return [min(1.0, len(c) / 100) for c in completions]

    funcs, weights = trl_rewards.trl_reward_functions(rm_scorer=length_scorer, weights={"judge": 0.0})
    [composite], _ = trl_rewards.trl_reward_functions(composite=True)
    args = GRPOConfig(output_dir=str(tmp_path), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=12, temperature=1.0,
        beta=0.04, loss_type="dapo", learning_rate=1e-2, reward_weights=weights + [0.0]))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=funcs + [composite], args=args, train_dataset=dataset,
                          processing_class=tok, peft_config=lora_config())
    before = trainable_snapshot(trainer.model)
    out = trainer.train()

    assert out.global_step == 1
    log = trainer.state.log_history[0]
    for name in (*rewards.COMPONENTS, "pns_composite_reward"):
        assert f"rewards/{name}/mean" in log, f"TRL did not log our reward function {name!r}"
    assert log["rewards/format/mean"] == 0.0  # random tokens are never a well-formed solution
    assert log["rewards/accuracy/mean"] == 0.0  # ... so never a verified-wrong answer either
    assert log["rewards/pns_composite_reward/mean"] == rewards.MALFORMED_PENALTY
    assert log["rewards/judge/mean"] == 0.0  # scorer off -> zeros
    assert log["reward_std"] > 0  # the stand-in scorer spreads the group: non-zero advantages
    assert set(seen_questions) <= {p["question"] for p in problems} and seen_questions
    changed = moved(trainer.model, before)
    assert changed and all("lora_" in n for n in changed)


def test_dpo_trainer_one_step_on_a_synthesize_pairs_file(tiny_model_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    import synthesize
    import train_dpo

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for p in load_problems("offline", limit=2):
            chosen = p["solution"].splitlines()[-1]  # short, to keep the step fast
            wrong = str(int(p["gold"]) + 2)
            rejected = chosen.replace(f"\\boxed{{{p['gold']}}}", f"\\boxed{{{wrong}}}")
            row = {"id": p["id"], **synthesize.messages(types.SimpleNamespace(pair_format="conversational", enable_thinking=False), tok,
                                                         p["question"], chosen, rejected),
                   # the metadata columns synthesize.py writes next to the three TRL fields
                   "gold": p["gold"], "chosen_answer": p["gold"], "rejected_answer": wrong,
                   **{f"rejected_{k}": v for k, v in zip((*rewards.COMPONENTS, "total"), (1.0, 1.0, 0.6, 0.4, 2.5))},
                   "rm_raw_chosen": 0.3, "rm_raw_rejected": 0.4, "judge_chosen": 0.5, "judge_rejected": 0.4,
                   "chosen_tokens": 12, "rejected_tokens": 12, "rank": 0, "num_pairs": 1, "candidates": 4,
                   "qualified": 2, "source": "pns", "chosen_source": "gold", "generator": None,
                   "model": "smollm2-135m", "seed": 0}
            f.write(json.dumps(row) + "\n")
    assert len(train_dpo.read_pairs(str(path))) == 2  # our stage 3 reads the same file

    dataset = load_dataset("json", data_files=str(path), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), **cpu_args(
        per_device_train_batch_size=2, max_length=256, beta=0.1, loss_type=["sigmoid"], learning_rate=1e-2))
    trainer = DPOTrainer(model=tiny_model_dir, args=args, train_dataset=dataset, processing_class=tok,
                         peft_config=lora_config())
    before = trainable_snapshot(trainer.model)
    out = trainer.train()

    assert out.global_step == 1
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    assert log["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    changed = moved(trainer.model, before)
    assert changed and all("lora_" in n for n in changed)
