"""train_generator.py (stage 1, reverse-RL GRPO of the negative generator) on the tiny random model.

The random model never writes a well-formed solution, so under the real reward every completion
gets the malformed penalty, every group has zero spread and every advantage is 0: nothing could
move. Most runs below therefore replace `rewards.score_completions` with `fake_score_completions`,
a deterministic function of the completion text whose rewards differ within a group. That is
honest for a plumbing test (the reward itself is tested in tests/test_rewards.py); the fake also
marks some rows as well-formed and wrong, so the runs show the reward model and the judge scoring
exactly those rows and no others.

- smoke: a 2-step run of `main()` writes every output (config.json, metrics.jsonl with 2 rows and
  every key, samples.jsonl, checkpoints/step-2, final/adapter_config.json, plots/*.png,
  report.md), moves the LoRA weights, and the model scorers run only on wrong, well-formed rows;
- the real reward on the random model: all malformed -> zero advantages -> with beta 0 the
  gradient is exactly 0 and the weights do not move (the "equal rewards, no gradient" invariance
  at the loop level); mask_truncated_completions takes truncated rows out of the loss;
- resume: 4 steps straight == 2 steps + resume + 2 (adapter weights and metrics rows, timing
  aside), across an epoch boundary, with num_iterations 2 and LoRA dropout; a used folder is
  refused without --resume, and --resume with changed settings is refused;
- micro-batching: per_device_train_batch_size 2 and 8 give the same loss, gradient norm and update;
- config validation: G < 2, sizes that do not divide, all-zero or unknown reward weights, a
  judge or reward model that cannot load: readable errors before any run folder is written.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pns_mini import rewards
from pns_mini.config import parse_config
from pns_mini.data import DataError
from pns_mini.modeling import ModelLoadError
from pns_mini.rewards import parse_reward_weights
from train_generator import TIMING_KEYS, Config, main

METRIC_KEYS = (
    ["step", "reward/total", "reward/format", "reward/accuracy", "reward/reward_model", "reward/judge",
     "frac_reward_zero_std", "rate/format", "rate/no_answer", "rate/wrong", "rate/correct", "rate/truncated",
     "length/mean", "length/max", "kl", "clip_ratio", "grad_norm", "lr", "loss", "scored/n"] + list(TIMING_KEYS))
SAMPLE_KEYS = ["step", "prompt_id", "question", "completion", "answer", "gold", "verdict", "total", "format",
               "accuracy", "reward_model", "judge", "advantage"]


def fake_score_completions(completions, golds, truncated, rm=None, judge=None, weights=None, *, questions=None,
                           **kw):
    """Stands in for rewards.score_completions with the same output rows. h = (sum of character
    codes) mod 5 spreads rewards within a group; rows with even h are "well-formed and wrong", so
    their reward model and judge scores (0 when not computed) enter the total; a scorer is called
    on those rows only, as the real one does (at a nonzero weight)."""
    w = rewards.resolve_weights(weights)
    wrong = [sum(map(ord, text)) % 5 % 2 == 0 for text in completions]
    counted = [i for i, x in enumerate(wrong) if x]

    def values(name, scorer):
        full = [0.0] * len(completions)
        if callable(scorer) and counted and w[name] > 0:
            for i, v in zip(counted, scorer([questions[i] for i in counted], [completions[i] for i in counted])):
                full[i] = float(v)
        return full

    rm, judge = values("reward_model", rm), values("judge", judge)
    rows = []
    for i, text in enumerate(completions):
        h = sum(map(ord, text)) % 5
        rows.append({"total": h / 4 + (rm[i] + judge[i] if wrong[i] else 0.0), "format": float(wrong[i]),
                     "accuracy": float(wrong[i]), "reward_model": rm[i], "judge": judge[i],
                     "answer": str(h), "verdict": "wrong" if wrong[i] else "no_answer",
                     "format_reason": "" if wrong[i] else "no_boxed"})
    return rows


@pytest.fixture
def fake_reward(monkeypatch):
    monkeypatch.setattr(rewards, "score_completions", fake_score_completions)


def run(tmp_path, tiny_model_dir, name, **overrides) -> dict:
    settings = dict(model=tiny_model_dir, problems="offline", limit=6, output_dir=str(tmp_path / name),
                    prompts_per_step=2, num_generations=4, max_completion_length=12, per_device_train_batch_size=4,
                    learning_rate=1e-3, warmup_steps=0, save_steps=2, log_samples_steps=1, scorer_batch_size=16)
    settings.update(overrides)
    return main(Config(**settings))


def adapter_weights(folder) -> dict:
    return load_file(Path(folder) / "adapter_model.safetensors")


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_smoke_run_writes_every_output_and_moves_the_lora_weights(tmp_path, tiny_model_dir, fake_reward):
    result = run(tmp_path, tiny_model_dir, "smoke", max_steps=2)
    out = tmp_path / "smoke"
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "report.md", "final/adapter_config.json",
                 "checkpoints/step-2/adapter_model.safetensors", "checkpoints/step-2/trainer.pt"):
        assert (out / name).exists(), name
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"rewards.png", "kl.png", "length.png", "time.png"}
    assert json.loads((out / "config.json").read_text())["num_generations"] == 4
    assert "| reward/judge |" in (out / "report.md").read_text()

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2] and metrics == result["metrics"]
    for row in metrics:
        assert set(METRIC_KEYS) <= set(row), set(METRIC_KEYS) - set(row)
        assert row["frac_reward_zero_std"] < 1 and row["grad_norm"] > 0 and row["kl"] >= 0

    # the adapter's B matrices start at zero (peft): any non-zero entry means the update happened
    weights = adapter_weights(out / "final")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    assert json.loads((out / "final/adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir

    # the reward model and the judge ran on exactly the wrong, well-formed rows
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 and set(SAMPLE_KEYS) <= set(samples[0])
    for s in samples:
        scored = s["verdict"] == "wrong" and s["format"] == 1.0
        assert (s["reward_model"] > 0 and s["judge"] > 0) == scored, s
    for row in metrics:
        assert row["scored/n"] == sum(1 for s in samples if s["step"] == row["step"] and s["verdict"] == "wrong")
    # advantages are centred within each group of G = 4 completions of one problem
    for start in range(0, len(samples), 4):
        group = samples[start:start + 4]
        assert len({s["prompt_id"] for s in group}) == 1
        assert abs(sum(s["advantage"] for s in group)) < 1e-4


def test_real_reward_on_the_random_model_gives_zero_gradient(tmp_path, tiny_model_dir):
    result = run(tmp_path, tiny_model_dir, "real", max_steps=1, beta=0.0)
    row = result["metrics"][0]
    assert row["reward/total"] == rewards.MALFORMED_PENALTY and row["rate/format"] == 0.0
    assert row["frac_reward_zero_std"] == 1.0 and row["grad_norm"] == 0.0 and row["kl"] is None
    assert all(v.abs().max() == 0 for k, v in adapter_weights(tmp_path / "real/final").items() if "lora_B" in k)


def test_masked_truncated_completions_leave_the_loss(tmp_path, tiny_model_dir, fake_reward):
    # 12 tokens are too few for the random model to stop: every completion is truncated
    row = run(tmp_path, tiny_model_dir, "masked", max_steps=1, mask_truncated_completions=True)["metrics"][0]
    assert row["rate/truncated"] == 1.0 and row["frac_reward_zero_std"] < 1
    assert row["loss"] == 0.0 and row["grad_norm"] == 0.0


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, fake_reward):
    # limit 6 problems, 2 per step: step 4 crosses into the second epoch of the problem order;
    # warmup 2 keeps the 2-step run's LR schedule equal to the 4-step run's for its steps
    common = dict(num_iterations=2, lora_dropout=0.1, warmup_steps=2, save_steps=2)
    straight = run(tmp_path, tiny_model_dir, "straight", max_steps=4, **common)
    run(tmp_path, tiny_model_dir, "resumed", max_steps=2, **common)
    resumed = run(tmp_path, tiny_model_dir, "resumed", max_steps=4, resume=True, **common)
    assert [r["step"] for r in resumed["metrics"]] == [1, 2, 3, 4]
    assert without_timing(resumed["metrics"]) == without_timing(straight["metrics"])
    a, b = adapter_weights(straight["final"]), adapter_weights(resumed["final"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    with pytest.raises(DataError, match="already holds a run"):  # no silent mixing of two runs
        run(tmp_path, tiny_model_dir, "resumed", max_steps=4, **common)
    with pytest.raises(DataError, match="beta"):
        run(tmp_path, tiny_model_dir, "resumed", max_steps=6, resume=True, **{**common, "beta": 0.1})


def test_micro_batches_give_the_full_batch_update(tmp_path, tiny_model_dir, fake_reward):
    full = run(tmp_path, tiny_model_dir, "full", max_steps=1, per_device_train_batch_size=8)
    micro = run(tmp_path, tiny_model_dir, "micro", max_steps=1, per_device_train_batch_size=2)
    f, m = full["metrics"][0], micro["metrics"][0]
    assert f["reward/total"] == m["reward/total"]  # the same rollouts
    for key in ("loss", "grad_norm", "kl"):
        assert m[key] == pytest.approx(f[key], rel=1e-4, abs=1e-7), key
    a, b = adapter_weights(full["final"]), adapter_weights(micro["final"])
    # Adam's first step moves each weight by lr * g / (|g| + eps): for a gradient element near eps
    # (~4e-8) the rounding of the micro-batch sum (~1% there) shows up as ~1e-5 * lr-sized noise.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-2 * 1e-3)  # 1% of lr


@pytest.mark.parametrize("overrides, message", [
    (dict(num_generations=1), "num-generations must be >= 2"),
    (dict(prompts_per_step=3, num_generations=3, per_device_train_batch_size=2), "must divide"),
    (dict(reward_weights="format=0,accuracy=0,reward_model=0,judge=0"), "all weights are zero"),
    (dict(reward_weights="format=1,plausibility=1"), "unknown reward component 'plausibility'"),
    (dict(reward_weights="1,1"), "needs 4 numbers"),
    (dict(loss_type="bnpo"), "loss-type must be one of"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(reward_weights="format=0", malformed_penalty=0.0), "below the format weight"),
])
def test_config_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config(**overrides)


def test_config_errors_on_the_command_line_are_one_readable_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Config, ["--prompts-per-step", "3", "--num-generations", "3"])
    assert exit_info.value.code == 2
    assert "per-device-train-batch-size 8 must divide prompts_per_step x num_generations = 9" in capsys.readouterr().err


def test_reward_weights_parse_as_names_or_a_trl_list():
    assert parse_reward_weights("judge=0") == {**rewards.DEFAULT_REWARD_WEIGHTS, "judge": 0.0}
    assert parse_reward_weights("0.5, 1, 2, 0") == {"format": 0.5, "accuracy": 1.0, "reward_model": 2.0, "judge": 0.0}
    assert parse_reward_weights(None) == rewards.DEFAULT_REWARD_WEIGHTS


@pytest.mark.parametrize("option", ["judge_model", "reward_model"])
def test_a_scorer_model_that_cannot_load_fails_before_the_run(tmp_path, tiny_model_dir, option):
    with pytest.raises(ModelLoadError, match=f"--{option.replace('_', '-')}"):
        run(tmp_path, tiny_model_dir, "bad", max_steps=1, **{option: "no-such-org/no-such-model"})
    assert not (tmp_path / "bad").exists()
