r"""The paper's experiment in one command (`make experiment`): are PNS negatives as plausible as
correct solutions to a reward model, and does DPO learn more from them than from other negatives?

Every stage is one of the project's scripts, called in this process with the exact arguments
written to report.md (each is the same as running `python <script> <args>`):

  0 split       the training problems (GSM8K train; `offline` without data files) into disjoint
                sets: rm_a, rm_b (reward-model pairs), stage1 (generator prompts), synth (pairs)
  1 rm-pairs-*  synthesize.py --negative-source rejection --chosen-source gold on rm_a and rm_b:
                chosen = the gold solution in our answer format, rejected = the base model's
                verified-wrong samples
  2 rm-a, rm-b  train_reward_model.py on each: rm-a is the reward model of stage 1 and of the
                PNS / prompted ranking; rm-b (other problems, other seed) is never used in any
                reward: it is the held-out judge of plausibility
  3 generator   train_generator.py --reward-model rm-a/final (the composite reward of the paper)
  4 neg-*       synthesize.py on the synth problems, one folder per negative source (pns,
                rejection, prompted, perturbed), the same gold chosen for every source
  5 figure1     chosen and each source's negatives scored by rm-a, rm-b and the judge (base
                model): means with bootstrap intervals, the share of pairs whose negative scores
                at least as high as its chosen, histograms
  6 dpo-*       train_dpo.py of the base model on each source's pairs (same steps, same seed)
  7 eval-*      evaluate.py of the base model and of each DPO adapter (greedy): accuracy with
                intervals, and the paired-bootstrap difference to the base model

Every stage is skipped when its marker stages/<name>.json exists and resumes (the scripts' own
resume) when it was interrupted, so rerunning the same command continues where it stopped. A
source without pairs (a small model may write no well-formed wrong answer) gets no DPO run and
its row says so. Outputs: <output-dir>/report.md (tables, plots, commands, wall times).

Examples
  make experiment                                      # EXPERIMENT_SCALE=cpu: ~2 h on 2 cores
  python experiments/paper.py --scale gpu --model Qwen/Qwen2.5-1.5B-Instruct --output-dir runs/exp-qwen
  python experiments/paper.py --scale smoke --model tests/tiny --output-dir /tmp/exp   # the test's form
"""
from __future__ import annotations

import gc
import importlib
import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stage scripts live in the repository root

from pns_mini.config import main_guard, parse_config, save_config  # noqa: E402
from pns_mini.data import (DataError, append_jsonl, iter_jsonl_tolerant, load_problems, write_atomic,  # noqa: E402
                           write_jsonl)
from evaluate import benchmark_names  # noqa: E402
from synthesize import SOURCES  # noqa: E402  (the four negative sources, in report order)
# Sizes per scale. cpu: the run published in docs/results.md (about 2 h on this 2-core machine,
# where a stage-1 step of 8 x 192 tokens takes ~75 s: 32 steps, not more, fit that budget);
# gpu: a 0.5B-1.5B instruct model on one consumer GPU (an estimate, not measured here); smoke:
# the test suite's form on a tiny random model, whose samples are never well formed, so its
# reward-model pairs come from the perturbed source (rm_negatives) instead of rejection sampling.
SCALES = {
    "smoke": dict(model=None, n_rm=3, n_stage1=4, n_synth=3, num_candidates=2, max_completion_length=12,
                  rm_steps=2, stage1_steps=2, stage1_warmup_steps=0, prompts_per_step=2, num_generations=2, dpo_steps=2,
                  eval_benchmarks="offline", eval_limit=3, eval_max_completion_length=12, rm_negatives="perturbed",
                  batch_size=4),
    "cpu": dict(model="smollm2-135m", n_rm=56, n_stage1=120, n_synth=48, num_candidates=4, max_completion_length=192,
                rm_steps=8, stage1_steps=32, stage1_warmup_steps=5, prompts_per_step=2, num_generations=4,
                dpo_steps=6, eval_benchmarks="gsm8k,offline", eval_limit=25, eval_max_completion_length=192,
                rm_negatives="rejection", batch_size=10),
    "gpu": dict(model="Qwen/Qwen2.5-0.5B-Instruct", n_rm=600, n_stage1=1600, n_synth=1000, num_candidates=8,
                max_completion_length=512, rm_steps=150, stage1_steps=200, stage1_warmup_steps=20,
                prompts_per_step=8, num_generations=8,
                dpo_steps=250, eval_benchmarks="gsm8k,offline", eval_limit=500, eval_max_completion_length=512,
                rm_negatives="rejection", batch_size=32),
}


@dataclass
class Config:
    scale: str = "cpu"
    """Preset sizes: smoke | cpu | gpu (SCALES); every field below left unset takes the preset's value."""
    output_dir: str = "runs/experiment"
    """Experiment folder; rerunning the same command into it resumes."""
    model: str | None = None
    """Base instruct model of every stage (alias, Hub id or folder)."""
    problems: str | None = None
    """Training problems to split: gsm8k_train when its file is found, else offline."""
    data_dir: str | None = None
    """Folder with benchmarks/ and train/ (default: $PNS_MINI_DATA, ../shared/data)."""
    seed: int = 0
    """Seed of the split and of every stage (rm-b uses seed + 1)."""
    n_rm: int | None = None
    """Problems per reward model (rm_a and rm_b each)."""
    n_stage1: int | None = None
    """Stage-1 prompts (one epoch = stage1_steps x prompts_per_step)."""
    n_synth: int | None = None
    """Problems every negative source is tried on."""
    num_candidates: int | None = None
    """Samples per problem, K, in every synthesis stage."""
    max_completion_length: int | None = None
    """Tokens per sampled solution in stages 1-3."""
    rm_steps: int | None = None
    """Optimizer steps of each reward model (8 pairs a step)."""
    stage1_steps: int | None = None
    """GRPO steps of the negative generator."""
    stage1_warmup_steps: int | None = None
    """Linear LR warmup of stage 1 (about a tenth of its steps)."""
    prompts_per_step: int | None = None
    """Stage-1 prompts per step."""
    num_generations: int | None = None
    """Stage-1 group size."""
    dpo_steps: int | None = None
    """DPO steps per source (4 pairs a step), the same for every source."""
    eval_benchmarks: str | None = None
    """Benchmarks of the main table (gsm8k is replaced by nothing when its file is missing)."""
    eval_limit: int | None = None
    """First N problems of each benchmark."""
    eval_max_completion_length: int | None = None
    """Tokens per greedy evaluation answer."""
    rm_negatives: str | None = None
    """Source of the reward models' rejected side: rejection (the protocol) | perturbed (smoke)."""
    batch_size: int | None = None
    """Problems per sampling call in synthesis."""
    device: str = "auto"
    """auto | cpu | cuda."""

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        for key, value in SCALES[self.scale].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.model is None:
            raise ValueError(f"--scale {self.scale} needs --model (a tiny model folder)")
        if self.rm_negatives not in ("rejection", "perturbed"):
            raise ValueError(f"--rm-negatives must be rejection or perturbed, got {self.rm_negatives!r}")


# ---------------------------------------------------------------------------------------------
# Stages: each a script's main() with a recorded command line, skipped once finished
# ---------------------------------------------------------------------------------------------
def run_stage(out: Path, name: str, command: str, run) -> dict:
    """Call `run()` unless stages/<name>.json says the stage finished as `command` (another command
    is refused: the finished outputs would not match it); record the command and its time."""
    marker = out / "stages" / f"{name}.json"
    if marker.exists():
        record = json.loads(marker.read_text())
        if record["command"] != command:
            raise DataError(f"{marker}: stage {name} finished as `{record['command']}`, now `{command}`; rerun "
                            f"with the settings in {out / 'experiment.json'} or use a new --output-dir")
        return record
    print(f"\n=== {name}: {command}", flush=True)
    start = time.perf_counter()
    run()
    record = {"name": name, "command": command, "seconds": round(time.perf_counter() - start, 1)}
    gc.collect()
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(record))
    return record


def script_stage(out: Path, name: str, script: str, args: list[str]) -> dict:
    """`run_stage` of `python <script>.py <args>`, run in this process through the script's main()."""
    module = importlib.import_module(script)
    command = f"python {script}.py " + " ".join(shlex.quote(a) for a in args)
    return run_stage(out, name, command, lambda: module.main(parse_config(module.Config, args)))


def split_sizes(cfg: Config) -> dict[str, int]:
    return {"rm_a": cfg.n_rm, "rm_b": cfg.n_rm, "stage1": cfg.n_stage1, "synth": cfg.n_synth}


def write_split(cfg: Config, out: Path) -> dict:
    """Shuffle the training problems (seeded) and cut four disjoint sets; each is a JSONL file."""
    path = out / "split.json"
    if path.exists():
        return json.loads(path.read_text())
    source = cfg.problems
    if source is None:
        try:
            problems, source = load_problems("gsm8k_train", cfg.data_dir), "gsm8k_train"
        except DataError:
            problems, source = load_problems("offline", limit=1000), "offline"
    else:
        problems = load_problems(source, cfg.data_dir, limit=None if source != "offline" else 1000)
    random.Random(cfg.seed).shuffle(problems)
    sizes = split_sizes(cfg)
    if sum(sizes.values()) > len(problems):
        raise DataError(f"{source}: {len(problems)} problems, the split needs {sum(sizes.values())}")
    split, start = {"source": source, "seed": cfg.seed, "files": {}, "ids": {}}, 0
    (out / "problems").mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        part = problems[start:start + n]
        start += n
        file = out / "problems" / f"{name}.jsonl"
        write_jsonl(file, part)
        split["files"][name], split["ids"][name] = str(file), [p["id"] for p in part]
    write_atomic(path, json.dumps(split))  # last: a split.json means every problems file is whole
    return split


def pair_count(folder: Path) -> int:
    return sum(1 for _ in iter_jsonl_tolerant(folder / "pairs.jsonl")) if (folder / "pairs.jsonl").exists() else 0


def synth_args(cfg: Config, problems: str, source: str, folder: Path, extra: list[str] = ()) -> list[str]:
    return ["--model", cfg.model, "--negative-source", source, "--chosen-source", "gold", "--problems", problems,
            "--num-candidates", str(cfg.num_candidates), "--batch-size", str(cfg.batch_size),
            "--max-completion-length", str(cfg.max_completion_length), "--seed", str(cfg.seed),
            "--device", cfg.device, "--output-dir", str(folder), *extra]


def run_all(cfg: Config, out: Path) -> list[dict]:
    """Stages 0-7 in order; returns the stage records (command, seconds)."""
    split = write_split(cfg, out)
    files, stages = split["files"], []
    stage = lambda *a: stages.append(script_stage(out, *a))  # noqa: E731

    # ---- 1-2: two reward models on disjoint problems -----------------------------------------
    for tag, seed in (("a", cfg.seed), ("b", cfg.seed + 1)):
        pairs = out / f"rm-pairs-{tag}"
        stage(f"rm-pairs-{tag}", "synthesize",
              synth_args(cfg, files[f"rm_{tag}"], cfg.rm_negatives, pairs, ["--pairs-per-problem", "2"]))
        if pair_count(pairs) < 4:
            raise DataError(f"{pairs}/pairs.jsonl: {pair_count(pairs)} pairs, a reward model needs at least 4 "
                            f"(more problems: --n-rm)")
        stage(f"rm-{tag}", "train_reward_model",
              ["--model", cfg.model, "--pairs", str(pairs / "pairs.jsonl"), "--seed", str(seed),
               "--eval-fraction", "0.25", "--max-steps", str(cfg.rm_steps), "--per-device-train-batch-size", "4",
               "--gradient-accumulation-steps", "2", "--learning-rate", "2e-4", "--warmup-steps", "2",
               "--eval-steps", str(max(1, cfg.rm_steps // 3)), "--save-steps", str(max(1, cfg.rm_steps // 3)),
               "--no-gradient-checkpointing", "--device", cfg.device, "--output-dir", str(out / f"rm-{tag}"),
               "--resume"])
    rm_a = str(out / "rm-a" / "final")

    # ---- 3: the negative generator (reverse RL on the composite reward with rm-a) ---------------
    stage("generator", "train_generator",
          ["--model", cfg.model, "--problems", files["stage1"], "--reward-model", rm_a,
           "--max-steps", str(cfg.stage1_steps), "--prompts-per-step", str(cfg.prompts_per_step),
           "--num-generations", str(cfg.num_generations),
           "--per-device-train-batch-size", str(math.gcd(8, cfg.prompts_per_step * cfg.num_generations)),
           "--max-completion-length", str(cfg.max_completion_length),
           "--learning-rate", "2e-5", "--warmup-steps", str(cfg.stage1_warmup_steps),
           "--no-gradient-checkpointing", "--log-samples-steps", "1", "--save-steps", str(max(1, cfg.stage1_steps // 6)),
           "--seed", str(cfg.seed), "--device", cfg.device, "--output-dir", str(out / "generator"), "--resume"])

    # ---- 4: negatives of every source on the same problems, the same gold chosen ----------------
    for source in SOURCES:
        extra = {"pns": ["--generator", str(out / "generator" / "final"), "--reward-model", rm_a],
                 "prompted": ["--reward-model", rm_a]}.get(source, [])
        stage(f"neg-{source}", "synthesize", synth_args(cfg, files["synth"], source, out / f"neg-{source}", extra))

    # ---- 5: Figure 1 ------------------------------------------------------------------------
    from experiments.analysis import score_negatives
    stages.append(run_stage(out, "figure1", "experiments/analysis.py score_negatives: rm-a, rm-b and judge scores",
                            lambda: score_negatives(cfg, out, files["synth"])))

    # ---- 6-7: DPO per source, evaluation of the base and of each adapter ------------------------
    evals = ["--model", cfg.model, "--benchmarks", cfg.eval_benchmarks, "--limit", str(cfg.eval_limit),
             "--max-completion-length", str(cfg.eval_max_completion_length),
             # a wide decode is cheaper per row: all the problems in one batch, up to 64
             "--batch-size", str(min(64, len(benchmark_names(cfg.eval_benchmarks)) * cfg.eval_limit)),
             "--seed", str(cfg.seed)]
    if cfg.data_dir:
        evals += ["--data-dir", cfg.data_dir]
    stage("eval-base", "evaluate", [*evals, "--output-dir", str(out / "eval-base")])
    for source in SOURCES:
        if pair_count(out / f"neg-{source}") == 0:
            continue
        stage(f"dpo-{source}", "train_dpo",
              ["--model", cfg.model, "--pairs", str(out / f"neg-{source}" / "pairs.jsonl"),
               "--max-steps", str(cfg.dpo_steps), "--per-device-train-batch-size", "2",
               "--gradient-accumulation-steps", "2", "--learning-rate", "5e-5", "--warmup-steps", "2",
               "--save-steps", str(max(1, cfg.dpo_steps // 3)), "--no-gradient-checkpointing", "--seed", str(cfg.seed),
               "--device", cfg.device, "--output-dir", str(out / f"dpo-{source}"), "--resume"])
        stage(f"eval-{source}", "evaluate",
              [*evals, "--adapter", str(out / f"dpo-{source}" / "final"), "--output-dir", str(out / f"eval-{source}")])
    return stages


def main(cfg: Config) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = out / "split.json"  # the problem sets every stage was run on may not change
    if split.exists():
        saved = json.loads(split.read_text())
        now = {"seed": cfg.seed, **({"source": cfg.problems} if cfg.problems else {}),
               "sizes": split_sizes(cfg)}
        was = {"seed": saved["seed"], **({"source": saved["source"]} if cfg.problems else {}),
               "sizes": {k: len(v) for k, v in saved["ids"].items()}}
        if now != was:
            raise DataError(f"{split}: the problems were split with {was}, now {now}; rerun with those "
                            f"settings or use a new --output-dir")
    # A finished stage must match its recorded command (run_stage); a stage not yet run may take new
    # settings, so experiment.json holds the latest ones and report.md each stage's exact command.
    if not (out / "experiment.json").exists():
        save_config(cfg, out / "experiment.json")
    start = time.perf_counter()
    stages = run_all(cfg, out)
    save_config(cfg, out / "experiment.json")
    append_jsonl(out / "runs.jsonl", {"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "seconds_this_call": round(time.perf_counter() - start, 1)})
    from experiments.analysis import write_report
    report = write_report(cfg, out, stages)
    print(f"done: the experiment's report is {report}")
    return report


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
