"""train_dpo.py (stage 3, DPO on preference pairs) on the tiny random model, in seconds per run:

- a 2-step smoke run of `main()` on a string-form and a conversational pairs file (the latter on a
  4-bit base with --merge) writes every output, tokenizes the prompt as evaluate.py would, and
  moves the LoRA weights;
- a malformed row fails with the file, the line and the field named (also through the CLI);
- an over-long pair is dropped and counted, never truncated;
- micro-batching: 1 pair x 4 accumulation steps and 4 pairs x 1 give the same loss, gradient norm
  and update (also with the RPO term);
- the first step sits at the DPO fixed point (loss ln 2, margin 0: policy = reference) and one
  step with a high learning rate raises the margin; a run started from an adapter uses that
  adapter as its reference;
- resume: 4 steps straight equal 2 steps + resume + 2 (adapter weights and metrics rows);
- precomputed reference log-probs give the same metrics as the on-the-fly reference and are
  reused, not recomputed, on resume.
The loss functions themselves are tested in tests/test_losses.py.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pns_mini.data import ANSWER_INSTRUCTION, SYSTEM_PROMPT, DataError, offline_problems, prompt_messages, prompt_text
from train_dpo import TIMING_KEYS, Config, main, read_pairs


def wrong_solution(problem: dict) -> str:
    """A close negative: the correct worked solution with its final number changed."""
    gold = problem["gold"]
    return problem["solution"].replace(f"\\boxed{{{gold}}}", f"\\boxed{{{int(gold) + 3}}}")


def pair_rows(n: int, form: str, short: bool = True) -> list[dict]:
    """n pairs from the offline problems. short: only the last step and the final sentence of
    the solution (~25 tokens instead of ~65), which keeps the CPU runs fast."""
    rows = []
    for p in offline_problems(n):
        if short:
            p = {**p, "solution": "\n".join(p["solution"].splitlines()[-2:])}
        if form == "conversational":  # the layout synthesize.py writes, metadata keys included
            rows.append({"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                    {"role": "user", "content": prompt_text(p["question"])}],
                         "chosen": [{"role": "assistant", "content": p["solution"]}],
                         "rejected": [{"role": "assistant", "content": wrong_solution(p)}], "id": p["id"]})
        else:
            rows.append({"prompt": p["question"], "chosen": p["solution"], "rejected": wrong_solution(p)})
    return rows


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(tmp_path, tiny_model_dir, name, pairs, **overrides) -> dict:
    args = dict(pairs=str(pairs), model=tiny_model_dir, output_dir=str(tmp_path / name), max_steps=2,
                per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=0,
                lr_scheduler_type="constant", gradient_checkpointing=False, lora_r=4, lora_dropout=0.0,
                save_steps=1, device="cpu")
    args.update(overrides)
    return main(Config(**args))


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "adapter_model.safetensors")


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def assert_rows_close(a: list[dict], b: list[dict], rel=1e-4, abs_=1e-4):
    """Equal within float noise: margins are beta x differences of ~-300-nat sums (fp32: ~1e-5)."""
    a, b = without_timing(a), without_timing(b)
    assert len(a) == len(b) and [r.keys() for r in a] == [r.keys() for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=abs_), (ra["step"], k, ra[k], rb[k])


# ---------------------------------------------------------------------------------------------
# Smoke runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["string", "conversational"])
def test_two_step_smoke_run_writes_outputs_and_moves_lora(tmp_path, tiny_model_dir, form):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(6, form, short=False))
    four_bit = form == "conversational"  # the QLoRA path, and --merge reloads the base unquantized
    result = run(tmp_path, tiny_model_dir, "run", pairs, load_in_4bit=four_bit, merge=four_bit, rpo_alpha=1.0)
    out = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "report.md", "plots/loss.png",
                 "plots/rewards.png", "plots/logps.png", "plots/accuracies.png", "final/adapter_config.json",
                 "checkpoints/step-2/trainer.pt"):
        assert (out / name).exists(), name
    rows = result["metrics"]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "grad_norm", "lr", "nll_loss", "seconds_per_step", "epoch"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["epoch"] == pytest.approx(4 / 6, abs=1e-3)
    # LoRA B starts at zero: non-zero now means the optimizer moved it
    weights = adapter_weights(out / "final")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    # the prompt the model saw is the chat prompt evaluate.py builds, the answer instruction once
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>")
    # a string prompt is built with our template (worked example + question: two instructions);
    # a conversational prompt is used as written (here one user turn)
    n_user_turns = sum(m["role"] == "user" for m in prompt_messages("x")) if form == "string" else 1
    assert sample["prompt"].count(ANSWER_INSTRUCTION) == n_user_turns and sample["prompt"].endswith("<|im_start|>assistant\n")
    assert sample["chosen"].endswith("}<|im_end|>") and sample["chosen"].count("<|im_end|>") == 1
    report = (out / "report.md").read_text()
    assert "read 6, dropped as too long 0" in report and '"step": 2' in report
    if four_bit:
        from transformers import AutoModelForCausalLM
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        q = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])


# ---------------------------------------------------------------------------------------------
# Input errors and filtering
# ---------------------------------------------------------------------------------------------
GOOD = {"prompt": "What is 1 + 1?", "chosen": r"1 + 1 = 2. \boxed{2}", "rejected": r"1 + 1 = 3. \boxed{3}"}
CHAT = {"prompt": [{"role": "user", "content": "What is 1 + 1?"}],
        "chosen": [{"role": "assistant", "content": r"\boxed{2}"}],
        "rejected": [{"role": "assistant", "content": r"\boxed{3}"}]}


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "chosen": 2}, "field 'chosen' must be a non-empty string"),
    ({**GOOD, "rejected": "  "}, "field 'rejected' must be a non-empty string"),
    ({**GOOD, "prompt": 7}, "field 'prompt' must be a list of .* or a non-empty string"),
    ({k: v for k, v in GOOD.items() if k != "rejected"}, "missing field 'rejected'"),
    ({**CHAT, "chosen": [{"role": "user", "content": "2"}]}, "field 'chosen' must be .*assistant"),
    ({**CHAT, "rejected": "3"}, "field 'rejected' must be .*assistant"),
    ({**CHAT, "prompt": [{"role": "user"}]}, "field 'prompt' must be"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, bad, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n")  # the bad row is on line 3
    with pytest.raises(DataError, match=f"pairs.jsonl:3: {message}"):
        read_pairs(str(path))


def test_malformed_row_is_one_line_error_from_the_cli(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "chosen": None}) + "\n")
    out = subprocess.run([sys.executable, "train_dpo.py", "--pairs", str(path), "--output-dir", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {path}:2: field 'chosen' must be a non-empty string, "
                                               "as the prompt is one (TRL's standard form), got None"]


def test_over_long_pair_is_dropped_and_counted(tmp_path, tiny_model_dir):
    rows = pair_rows(4, "string")
    rows.insert(2, {**rows[0], "rejected": rows[0]["rejected"] + " and so on" * 200})
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    result = run(tmp_path, tiny_model_dir, "run", pairs, max_length=300, max_steps=1)
    assert result["counts"] == {"pairs_read": 5, "pairs_dropped_too_long": 1, "pairs_kept": 4, "forms": ["string"]}
    assert "read 5, dropped as too long 1" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(DataError, match="all 5 pairs are longer than max_length=50"):
        run(tmp_path, tiny_model_dir, "none-left", pairs, max_length=50)


def test_adapter_without_precomputed_reference_is_a_config_error():
    with pytest.raises(ValueError, match="--adapter needs --precompute-ref-log-probs"):
        Config(pairs="p.jsonl", adapter="some/adapter")


# ---------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------
def test_micro_batching_gives_the_full_batch_update(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(8, "conversational"))
    # with the RPO term both parts of the loss are scaled; no clipping: the raw gradient norm
    common = dict(max_steps=2, rpo_alpha=1.0, max_grad_norm=0.0)
    micro = run(tmp_path, tiny_model_dir, "micro", pairs, per_device_train_batch_size=1,
                gradient_accumulation_steps=4, **common)
    full = run(tmp_path, tiny_model_dir, "full", pairs, per_device_train_batch_size=4,
               gradient_accumulation_steps=1, **common)
    # the loss and the gradient norm would be 4x off if each micro-batch took its own mean
    assert_rows_close(micro["metrics"], full["metrics"])
    a, b = adapter_weights(micro["final"]), adapter_weights(full["final"])
    for k in a:
        # Adam divides by sqrt(v): float noise in a near-zero gradient moves its weight by a few
        # % of one lr step, so compare updates to 5% of lr (a 4x gradient error shows in the rows)
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=5e-5)


def test_first_step_is_at_the_reference_and_one_step_raises_the_margin(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(4, "string"))
    # every step sees all 4 pairs, so step 2 measures the same pairs after one update
    rows = run(tmp_path, tiny_model_dir, "run", pairs, per_device_train_batch_size=4, learning_rate=1e-2)["metrics"]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: sigmoid DPO = ln 2
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["rewards/margins"] > 0.05 and rows[1]["loss"] < math.log(2) - 0.01
    assert rows[1]["rewards/accuracies"] > 0.5
    assert not any(r["warning/chosen_logp_drop"] for r in rows)  # default threshold: 2 nats

    # Started from that adapter, the reference is the adapter itself (not the base): ln 2 again.
    again = run(tmp_path, tiny_model_dir, "from-adapter", pairs, per_device_train_batch_size=4, max_steps=1,
                adapter=str(tmp_path / "run" / "final"), precompute_ref_log_probs=True)["metrics"]
    assert again[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(again[0]["logps/chosen"] - rows[0]["logps/chosen"]) > 0.1  # the adapter is on


def test_chosen_logp_drop_is_flagged(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(4, "string"))
    # the flag follows logps/chosen_vs_ref (0 at step 1): a threshold of -1 nats flags it
    rows = run(tmp_path, tiny_model_dir, "a", pairs, max_steps=1, chosen_logp_drop_warning=-1.0)["metrics"]
    assert rows[0]["logps/chosen_vs_ref"] == pytest.approx(0.0, abs=1e-4) and rows[0]["warning/chosen_logp_drop"]
    assert "WARNING: logps/chosen fell" in (tmp_path / "a" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Resume and the precomputed reference
# ---------------------------------------------------------------------------------------------
def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(3, "conversational"))
    # dropout (RNG state), warmup (scheduler state) and 4 steps x 1 pair > 3 (data position across epochs)
    common = dict(lora_dropout=0.1, warmup_steps=2, save_steps=2, per_device_train_batch_size=1)
    straight = run(tmp_path, tiny_model_dir, "straight", pairs, max_steps=4, **common)
    run(tmp_path, tiny_model_dir, "resumed", pairs, max_steps=2, **common)
    resumed = run(tmp_path, tiny_model_dir, "resumed", pairs, max_steps=4, resume=True, **common)
    assert without_timing(resumed["metrics"]) == without_timing(straight["metrics"])
    a, b = adapter_weights(straight["final"]), adapter_weights(resumed["final"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    with pytest.raises(DataError, match="already holds a run"):  # no silent mixing of two runs
        run(tmp_path, tiny_model_dir, "resumed", pairs, max_steps=4, **common)


def test_precomputed_reference_matches_on_the_fly_and_is_reused_on_resume(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", pair_rows(4, "string"))
    on_the_fly = run(tmp_path, tiny_model_dir, "fly", pairs, max_steps=2)["metrics"]
    run(tmp_path, tiny_model_dir, "pre", pairs, max_steps=1, precompute_ref_log_probs=True)
    cache = tmp_path / "pre" / "ref_logps.pt"
    stamp = cache.stat().st_mtime_ns
    pre = run(tmp_path, tiny_model_dir, "pre", pairs, max_steps=2, precompute_ref_log_probs=True, resume=True)
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    assert torch.load(cache)["chosen"].shape == (4,)
    assert pre["metrics"][0]["loss"] == pytest.approx(on_the_fly[0]["loss"], abs=1e-6)
    assert_rows_close(pre["metrics"], on_the_fly)  # step 2: the policy has moved, the reference matters
