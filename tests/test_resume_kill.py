"""kill -9, then the same command again: each script, run as a user runs it (a subprocess on the
tiny random model), is killed with SIGKILL at a moment the test picks, then rerun with --resume;
the result must equal an uninterrupted run (metrics rows, final weights, pairs).

The moment is picked with the test-only hook data.kill_point: $PNS_MINI_KILL_AT="metrics.jsonl:1"
kills the process right after it appended its first metrics row, "checkpoint:2" while
checkpoints/step-2 is still a temp folder. The uninterrupted runs are in-process `main()` calls
with the same flags (and the same torch thread count as the subprocesses); the reward model's is
a subprocess like the killed one.

- generator: killed after step 1's metrics row, before any checkpoint (--save-steps 50): --resume
  restarts cleanly at step 0, and the rows written before the kill are not duplicated;
- DPO: killed while writing the step-2 checkpoint (a .step-2.tmp-* folder is left): --resume
  continues from step 1 and removes the temp folder; then --resume --max-steps 4 extends the run
  with a warmup (1) shorter than the first run (2), so the extension follows the new length's LR
  schedule: it equals a straight 4-step run;
- reward model: killed after step 3's row (checkpoint at step 2); a stale .final.tmp-* is removed;
- synthesis: killed between the two pairs of a problem: the resumed run writes exactly the pairs
  of an uninterrupted one (a problem's candidates are seeded by the problem, not by its batch),
  the running totals in metrics.jsonl continue, and a rerun with every problem done loads no model.
Each finished run ends with one line naming its folder, its final model or file and report.md.
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pns_mini import rewards
from pns_mini.config import parse_config
from pns_mini.data import load_problems

ROOT = Path(__file__).resolve().parents[1]


def cli(script: str, args: list[str], kill_at: str | None = None, runner: str | None = None):
    """Run `python script args` (or the -c program `runner` with those argv) as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    env.pop("PNS_MINI_KILL_AT", None)
    if kill_at:
        env["PNS_MINI_KILL_AT"] = kill_at
    command = [sys.executable, "-c", runner, *args] if runner else [sys.executable, script, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def runner(script: str, patch: str) -> str:
    """A -c program that runs `script`'s command line with a test double put in place by `patch`."""
    module = script.removesuffix(".py")
    return (f"import sys\nfrom pns_mini.config import main_guard\nimport {module}\n{patch}\n"
            f"sys.argv = ['{script}', *sys.argv[1:]]\nmain_guard({module}.main, {module}.Config, {module}.__doc__)\n")


def killed(proc) -> None:
    assert proc.returncode == -9, f"expected a SIGKILL, got rc {proc.returncode}:\n{proc.stderr[-3000:]}"


def finished(proc, out: Path, final: str) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"done: {out} (") and final in last and str(out / "report.md") in last, last


def weights(folder) -> dict:
    return load_file(Path(folder) / "adapter_model.safetensors")


def assert_same_weights(a, b, atol=1e-6):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


def assert_same_rows(a: list[dict], b: list[dict], timing: tuple[str, ...]):
    a = [{k: v for k, v in r.items() if k not in timing} for r in a]
    b = [{k: v for k, v in r.items() if k not in timing} for r in b]
    assert [r.get("step") for r in a] == [r.get("step") for r in b]
    assert_close(a, b, "metrics")


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_close(a, b, where="row"):
    """Equal JSON values, floats within float noise (scores of a batch padded another way)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# ---------------------------------------------------------------------------------------------
# Training scripts
# ---------------------------------------------------------------------------------------------
# train_generator.py with test_train_generator's deterministic fake reward (the random model never
# writes a well-formed answer, so under the real reward nothing would move)
GENERATOR_RUNNER = runner("train_generator.py", "from test_train_generator import fake_score_completions\n"
                                                  "from pns_mini import rewards\n"
                                                  "rewards.score_completions = fake_score_completions")


def test_generator_killed_before_its_first_checkpoint_restarts_cleanly(tmp_path, tiny_model_dir, monkeypatch):
    import train_generator
    from test_train_generator import fake_score_completions
    out = tmp_path / "killed"
    args = ["--model", tiny_model_dir, "--problems", "offline", "--limit", "4", "--prompts-per-step", "2",
            "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "8",
            "--max-steps", "2", "--warmup-steps", "1", "--learning-rate", "1e-3", "--lora-dropout", "0.1",
            "--save-steps", "50", "--log-samples-steps", "1",
            "--reward-weights", "format=1,accuracy=1,reward_model=0,judge=0"]  # no scorer models: faster
    killed(cli("", [*args, "--output-dir", str(out)], kill_at="metrics.jsonl:1", runner=GENERATOR_RUNNER))
    assert len(rows(out / "metrics.jsonl")) == 1 and not (out / "checkpoints").exists()
    proc = cli("", [*args, "--output-dir", str(out), "--resume"], runner=GENERATOR_RUNNER)
    finished(proc, out, str(out / "final"))
    assert "no checkpoint yet, so the run starts again at step 0 (1 log row(s) of the interrupted run dropped)" in proc.stdout

    monkeypatch.setattr(rewards, "score_completions", fake_score_completions)
    straight = train_generator.main(parse_config(train_generator.Config, [*args, "--output-dir", str(tmp_path / "s")]))
    assert_same_rows(rows(out / "metrics.jsonl"), straight["metrics"], train_generator.TIMING_KEYS)
    assert [r["step"] for r in rows(out / "samples.jsonl")] == [r["step"] for r in rows(tmp_path / "s" / "samples.jsonl")]
    assert_same_weights(out / "final", straight["final"])


def dpo_pairs(path: Path) -> Path:
    from test_train_dpo import pair_rows, write_pairs
    return write_pairs(path, pair_rows(3, "conversational"))


def test_dpo_killed_in_a_checkpoint_write_resumes_and_extends(tmp_path, tiny_model_dir):
    import train_dpo
    out, pairs = tmp_path / "killed", dpo_pairs(tmp_path / "pairs.jsonl")
    args = ["--pairs", str(pairs), "--model", tiny_model_dir, "--per-device-train-batch-size", "1",
            "--gradient-accumulation-steps", "1", "--learning-rate", "1e-3", "--warmup-steps", "1",
            "--lora-r", "4", "--lora-dropout", "0.1", "--no-gradient-checkpointing", "--save-steps", "1",
            "--device", "cpu", "--output-dir", str(out)]
    killed(cli("train_dpo.py", [*args, "--max-steps", "2"], kill_at="checkpoint:2"))
    assert list((out / "checkpoints").glob(".step-2.tmp-*")), "the kill should leave the temp checkpoint"
    finished(cli("train_dpo.py", [*args, "--max-steps", "2", "--resume"]), out, str(out / "final"))
    assert not list((out / "checkpoints").glob(".step-*.tmp-*"))  # the stale temp folder is gone
    extended = train_dpo.main(parse_config(train_dpo.Config, [*args, "--max-steps", "4", "--resume"]))
    assert extended["metrics"][2]["lr"] > 0  # the old 2-step schedule ended at LR 0

    straight_args = [a if a != str(out) else str(tmp_path / "s") for a in args]
    straight = train_dpo.main(parse_config(train_dpo.Config, [*straight_args, "--max-steps", "4"]))
    assert_same_rows(extended["metrics"], straight["metrics"], train_dpo.TIMING_KEYS)
    assert_same_weights(out / "final", straight["final"])


def test_reward_model_killed_after_a_step_resumes(tmp_path, tiny_model_dir):
    from pns_mini import runs
    from test_train_reward_model import write_pairs
    out, pairs = tmp_path / "killed", write_pairs(tmp_path / "pairs.jsonl", n=8, long_one=False)
    args = ["--model", tiny_model_dir, "--pairs", str(pairs), "--eval-fraction", "0.25", "--max-length", "200",
            "--max-steps", "3", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--learning-rate", "5e-3", "--warmup-steps", "1", "--eval-steps", "0", "--save-steps", "2",
            "--lora-r", "4", "--lora-alpha", "8", "--device", "cpu"]
    killed(cli("train_reward_model.py", [*args, "--output-dir", str(out)], kill_at="metrics.jsonl:3"))
    assert runs.list_checkpoints(out) == [2] and len(rows(out / "metrics.jsonl")) == 3
    (out / ".final.tmp-stale").mkdir()  # what a kill inside save_atomic leaves
    proc = cli("train_reward_model.py", [*args, "--output-dir", str(out), "--resume"])
    finished(proc, out, str(out / "final"))
    assert not (out / ".final.tmp-stale").exists()
    assert "newly initialized" not in proc.stderr + proc.stdout  # the new score head is expected: no notice

    # The straight run is a subprocess too: run in-process, its score means once differed from the
    # killed run's (rows written before the kill) by 8e-5 relative, float noise between processes.
    finished(cli("train_reward_model.py", [*args, "--output-dir", str(tmp_path / "s")]), tmp_path / "s",
             str(tmp_path / "s" / "final"))
    assert_same_rows(rows(out / "metrics.jsonl"), rows(tmp_path / "s" / "metrics.jsonl"), ("step_time_s",))
    assert_same_weights(out / "adapter", tmp_path / "s" / "adapter")


# ---------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------
PROBLEMS = load_problems("offline", limit=4)


def seeded_candidates(model, tokenizer, prompts, cfg, seed):
    """Stands in for synthesize.sample_candidates: for each prompt, test_synthesize's canned
    candidates (two well-formed wrong ones among them) in an order drawn from THAT prompt's seed,
    as generation.sample draws each prompt's rows from its own generator."""
    from test_synthesize import canned
    assert isinstance(seed, list) and len(seed) == len(prompts), "one seed per prompt"
    out = []
    for prompt, s in zip(prompts, seed):
        problem = next(p for p in PROBLEMS if p["question"].strip() in prompt)
        group = canned(problem["gold"])
        random.Random(s).shuffle(group)
        out.append(group[:cfg.num_candidates])
    return out


SYNTH_RUNNER = runner("synthesize.py", "from test_resume_kill import seeded_candidates\n"
                                       "synthesize.sample_candidates = seeded_candidates")


# pairs rows 1-2 are problem 0's, row 3 the first of problem 1's: killed between its two pairs; row 8 is the last
# pair of the last batch: killed before that batch's metrics row, which the rerun (with nothing to sample) writes
@pytest.mark.parametrize("kill_row", [3, 8])
def test_synthesis_killed_between_pairs_writes_the_uninterrupted_pairs(tmp_path, tiny_model_dir, monkeypatch,
                                                                       kill_row):
    import synthesize
    from pns_mini import modeling
    out = tmp_path / "killed"
    args = ["--model", tiny_model_dir, "--negative-source", "rejection", "--problems", "offline", "--limit", "4",
            "--num-candidates", "5", "--batch-size", "2", "--pairs-per-problem", "2", "--max-completion-length", "16"]
    killed(cli("", [*args, "--output-dir", str(out)], kill_at=f"pairs.jsonl:{kill_row}", runner=SYNTH_RUNNER))
    assert len(rows(out / "pairs.jsonl")) == kill_row
    finished(cli("", [*args, "--output-dir", str(out)], runner=SYNTH_RUNNER), out, str(out / "pairs.jsonl"))

    monkeypatch.setattr(synthesize, "sample_candidates", seeded_candidates)
    synthesize.main(parse_config(synthesize.Config, [*args, "--output-dir", str(tmp_path / "s")]))
    a, b = rows(out / "pairs.jsonl"), rows(tmp_path / "s" / "pairs.jsonl")
    assert [(r["id"], r["chosen"], r["rejected"]) for r in a] == [(r["id"], r["chosen"], r["rejected"]) for r in b]
    assert a == b  # every score too: the batch a kill cut is redone whole, with the same padding
    assert rows(out / "samples.jsonl") == rows(tmp_path / "s" / "samples.jsonl")
    totals = lambda path: {k: v for k, v in rows(path)[-1].items() if k != "seconds"}  # noqa: E731
    assert totals(out / "metrics.jsonl") == totals(tmp_path / "s" / "metrics.jsonl")  # running totals continue

    def no_load(*args, **kwargs):
        raise AssertionError("a rerun with every problem done must not load a model")
    monkeypatch.setattr(modeling, "load_model_and_tokenizer", no_load)
    before = (out / "pairs.jsonl").read_bytes()
    synthesize.main(parse_config(synthesize.Config, [*args, "--output-dir", str(out)]))
    assert (out / "pairs.jsonl").read_bytes() == before
