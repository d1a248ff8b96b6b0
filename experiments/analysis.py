"""Figure 1 scoring and the report of experiments/paper.py: every number in report.md is computed
here from the files the stages wrote, so the report can be redrawn after the fact
(`python experiments/analysis.py runs/experiment`).

Intervals: percentile bootstrap of the mean (evaluate.bootstrap_ci, 2,000 resamples, seeded) for
scores and rates; the accuracy difference to the base model is a PAIRED bootstrap over the same
problems (both models answered each one, so resampling problems keeps each pair together).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluate import bootstrap_ci  # noqa: E402  (the one bootstrap of the project)
from experiments.paper import SCALES, Config, pair_count  # noqa: E402
from pns_mini.data import iter_jsonl_tolerant, read_jsonl, write_atomic, write_jsonl  # noqa: E402
from pns_mini.report import text_of  # noqa: E402
from pns_mini.rewards import FORMAT_REASONS, plausibility_counts  # noqa: E402
from synthesize import SOURCES  # noqa: E402
SCORERS = ("rm_a", "rm_b", "judge")
SCORER_NAMES = {"rm_a": "rm-a (stage-1 reward)", "rm_b": "rm-b (held out)", "judge": "judge (0-3)"}
PAPER = "the paper's Figure 1 (Qwen3-4B RM): plausible negative +3.34, correct +3.21, rejection-sampled -3.13"


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------
def bootstrap_mean(values: list[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float, float] | None:
    """(mean, 95% percentile-bootstrap interval) of `values`, by evaluate.bootstrap_ci; None for none."""
    if not values:
        return None
    lo, hi = bootstrap_ci(values, resamples, seed)
    return sum(values) / len(values), lo, hi


def paired_difference(a: list[float], b: list[float], seed: int = 0, resamples: int = 2000):
    """Mean of a - b over paired items, with its bootstrap interval."""
    return bootstrap_mean([x - y for x, y in zip(a, b)], seed, resamples)


def fmt(ci, digits: int = 2, signed: bool = True) -> str:
    if ci is None:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(ci[0])} [{f.format(ci[1])}, {f.format(ci[2])}]"


# ---------------------------------------------------------------------------------------------
# Stage 5: every chosen and every source's negative under both reward models and the judge
# ---------------------------------------------------------------------------------------------
def score_negatives(cfg, out: Path, problems_file: str) -> Path:
    """figure1/scores.jsonl: one row per scored text: group (chosen or a source), id, rm_a, rm_b, judge."""
    import torch

    from pns_mini.modeling import load_model_and_tokenizer
    from pns_mini.scorers import JudgeScorer, classifier_reward_model

    questions = {p["id"]: p["question"] for p in read_jsonl(problems_file)}
    items = {}  # (group, id) -> text; the chosen of a problem is the same gold in every source
    for source in SOURCES:
        for pair in iter_jsonl_tolerant(out / f"neg-{source}" / "pairs.jsonl"):
            items[("chosen", pair["id"])] = text_of(pair["chosen"])
            items[(source, pair["id"])] = text_of(pair["rejected"])
    keys = sorted(items)
    qs, texts = [questions[k[1]] for k in keys], [items[k] for k in keys]
    scores = {}
    with torch.no_grad():
        for name in ("rm_a", "rm_b"):
            rm = classifier_reward_model(str(out / name.replace("_", "-") / "final"), name, device=cfg.device)
            scores[name] = rm.raw(qs, texts) if keys else []
            del rm
        model, tok = load_model_and_tokenizer(cfg.model, device=cfg.device)
        scores["judge"] = JudgeScorer(model, tok).raw(qs, texts) if keys else []
    path = out / "figure1" / "scores.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, ({"group": g, "id": i, **{s: scores[s][k] for s in SCORERS}} for k, (g, i) in enumerate(keys)))
    return path


def figure1(out: Path, seed: int) -> tuple[list[str], dict]:
    """The Figure 1 table (mean score per group and scorer) and the share of pairs whose negative
    scores at least as high as its own chosen; plus figure1/hist.png."""
    rows = list(iter_jsonl_tolerant(out / "figure1" / "scores.jsonl"))
    by = {}
    for r in rows:
        by.setdefault(r["group"], {})[r["id"]] = r
    groups = [g for g in ("chosen", *SOURCES) if g in by]
    lines = [f"| texts | n | {' | '.join(SCORER_NAMES[s] for s in SCORERS)} |", "| --- | --- |" + " --- |" * len(SCORERS)]
    result = {}
    for g in groups:
        cis = [bootstrap_mean([r[s] for r in by[g].values()], seed) for s in SCORERS]
        result[g] = dict(zip(SCORERS, cis))
        lines.append(f"| {g} | {len(by[g])} | " + " | ".join(fmt(c) for c in cis) + " |")
    lines += ["", "Share of pairs whose negative scores at least as high as its chosen (95% bootstrap):", "",
              f"| source | pairs | {' | '.join(SCORER_NAMES[s] for s in SCORERS)} |", "| --- | --- |" + " --- |" * 3]
    for g in groups[1:]:
        cis = [bootstrap_mean([float(r[s] >= by["chosen"][i][s]) for i, r in by[g].items()], seed) for s in SCORERS]
        result[g].update({f"ge_{s}": c for s, c in zip(SCORERS, cis)})
        lines.append(f"| {g} | {len(by[g])} | " + " | ".join(fmt(c, signed=False) for c in cis) + " |")
    if groups:
        plot_histograms(by, groups, out / "figure1" / "hist.png")
        lines += ["", "![scores per source](figure1/hist.png)"]
    return lines, result


def plot_histograms(by: dict, groups: list[str], target: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), len(SCORERS), figsize=(11, 1.6 * len(groups) + 0.6), squeeze=False,
                             sharex="col")
    for col, s in enumerate(SCORERS):
        values = [r[s] for g in groups for r in by[g].values()]
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo + 1e-9) * k / 20 for k in range(21)]
        for row, g in enumerate(groups):
            ax = axes[row][col]
            ax.hist([r[s] for r in by[g].values()], bins=bins, color="C0" if g == "chosen" else f"C{row}")
            ax.set_ylabel(g, fontsize=8)
            if row == 0:
                ax.set_title(SCORER_NAMES[s], fontsize=9)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The other tables
# ---------------------------------------------------------------------------------------------
def reward_model_table(out: Path) -> list[str]:
    lines = ["| reward model | train pairs | held-out pairs | held-out accuracy (95% Wilson) | margin |",
             "| --- | --- | --- | --- | --- |"]
    for tag in ("a", "b"):
        path = out / f"rm-{tag}" / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        ev = s.get("eval") or {}
        acc = (f"{ev['accuracy']:.2f} [{ev['accuracy_ci95'][0]:.2f}, {ev['accuracy_ci95'][1]:.2f}]" if ev else "-")
        lines.append(f"| rm-{tag} | {s['pairs']['train']} | {s['pairs']['eval']} | {acc} | "
                     f"{ev.get('margin_mean', float('nan')):+.2f} |")
    return lines


def stage1_table(out: Path, seed: int) -> list[str]:
    """First vs last quarter of stage-1 steps, per completion (samples.jsonl logs every one)."""
    rows = list(iter_jsonl_tolerant(out / "generator" / "samples.jsonl"))
    if not rows:
        return []
    steps = sorted({r["step"] for r in rows})
    k = max(1, len(steps) // 4)
    first = [r for r in rows if r["step"] in steps[:k]]
    last = [r for r in rows if r["step"] in steps[-k:]]
    measures = {"well-formed and wrong": lambda r: float(plausibility_counts(r)),
                "correct": lambda r: float(r["verdict"] == "correct"),
                **{f"reward/{c}": (lambda c: lambda r: r[c])(c)
                   for c in ("total", "format", "accuracy", "reward_model", "judge")},
                "length (tokens)": lambda r: float(r["length"])}
    reasons = [x for x in FORMAT_REASONS if any(r["format_reason"] == x for r in rows)]
    measures.update({f"refused: {x}": (lambda x: lambda r: float(r["format_reason"] == x))(x) for x in reasons})
    lines = [f"Steps {steps[0]}-{steps[k - 1]} against steps {steps[-k]}-{steps[-1]} "
             f"({len(first)} and {len(last)} completions; mean [95% bootstrap]):", "",
             "| measure | first | last | last - first |", "| --- | --- | --- | --- |"]
    for name, f in measures.items():
        a, b = bootstrap_mean([f(r) for r in first], seed), bootstrap_mean([f(r) for r in last], seed)
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {b[0] - a[0]:+.2f} |")
    plots = [p for p in ("rewards", "outcomes", "kl") if (out / "generator" / "plots" / f"{p}.png").exists()]
    return lines + [""] + [f"![{p}](generator/plots/{p}.png)" for p in plots]


def negatives_table(out: Path) -> list[str]:
    lines = ["| source | problems | pairs | candidates verified wrong | tokens (rejected) | similarity to chosen |",
             "| --- | --- | --- | --- | --- | --- |"]
    for source in SOURCES:
        path = out / f"neg-{source}" / "stats.json"
        if path.exists():
            s = json.loads(path.read_text()).get(source) or {}
            num = lambda k, d=2: "-" if s.get(k) is None else f"{s[k]:.{d}f}"  # noqa: E731
            lines.append(f"| {source} | {s.get('problems_tried', 0)} | {s.get('pairs', 0)} | "
                         f"{num('verified_wrong_rate')} | {num('tokens_rejected', 0)} | {num('similarity')} |")
    return lines


def correctness(folder: Path) -> dict[tuple[str, str], float]:
    """(benchmark, id) -> 1.0 / 0.0 from an evaluate.py run's samples (greedy: one per problem)."""
    return {(r["benchmark"], r["id"]): float(bool(r["correct"])) for r in iter_jsonl_tolerant(folder / "samples.jsonl")}


def main_table(out: Path, seed: int) -> list[str]:
    base = correctness(out / "eval-base")
    if not base:
        return []
    benchmarks = sorted({b for b, _ in base})
    lines = [f"| policy | pairs | {' | '.join(benchmarks)} | average | average - base (paired) |",
             "| --- | --- |" + " --- |" * (len(benchmarks) + 2)]
    for name in ("base", *SOURCES):
        folder = out / f"eval-{name}"
        got = correctness(folder) if folder.exists() else {}
        pairs = "-" if name == "base" else str(pair_count(out / f"neg-{name}"))
        if not got:
            lines.append(f"| dpo-{name} | {pairs} | " + " | ".join("-" for _ in benchmarks)
                         + " | - | no pairs, no DPO run |")
            continue
        cells = [fmt(bootstrap_mean([got[k] for k in sorted(got) if k[0] == b], seed), 3, False) for b in benchmarks]
        # the average weighs each benchmark equally: per problem, its correctness / its benchmark's size
        weight = {b: 1 / (len(benchmarks) * sum(1 for k in got if k[0] == b)) * len(got) for b in benchmarks}
        avg = bootstrap_mean([got[k] * weight[k[0]] for k in sorted(got)], seed)
        diff = "-" if name == "base" else fmt(paired_difference(
            [got[k] * weight[k[0]] for k in sorted(base)], [base[k] * weight[k[0]] for k in sorted(base)], seed), 3)
        lines.append(f"| {'base' if name == 'base' else 'dpo-' + name} | {pairs} | {' | '.join(cells)} | "
                     f"{fmt(avg, 3, False)} | {diff} |")
    return lines


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------
def write_report(cfg, out: Path, stages: list[dict]) -> Path:
    split = json.loads((out / "split.json").read_text())
    fig_lines, _ = figure1(out, cfg.seed)
    total = sum(s["seconds"] for s in stages)
    text = [
        f"# PNS experiment: {cfg.model}, scale {cfg.scale}", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')}. Training problems: {split['source']}, shuffled with seed "
        f"{split['seed']} into disjoint sets: " + ", ".join(f"{k} {len(v)}" for k, v in split["ids"].items())
        + " (ids in split.json). Sampling: K = {0}, {1} tokens; stage 1: {2} steps of {3} x {4}; DPO: {5} steps "
        "of 4 pairs; evaluation: greedy, {6} tokens, first {7} problems of {8}.".format(
            cfg.num_candidates, cfg.max_completion_length, cfg.stage1_steps, cfg.prompts_per_step,
            cfg.num_generations, cfg.dpo_steps, cfg.eval_max_completion_length, cfg.eval_limit, cfg.eval_benchmarks), "",
        "## Reward models", "", "rm-a is stage 1's reward model and ranks the pns and prompted candidates; rm-b "
        "(other problems, other seed) is used in no reward: it is the honest test of plausibility.", "",
        *reward_model_table(out), "",
        "## Stage 1: the negative generator", "", *stage1_table(out, cfg.seed), "",
        "## Negatives per source (the same problems, the same gold chosen)", "", *negatives_table(out), "",
        "## Figure 1, measured", "", f"Raw scores, mean [95% bootstrap]; for reference, {PAPER}.", "",
        *fig_lines, "",
        "## Main table: DPO of the base model on each source's pairs", "",
        "Accuracy, mean [95% bootstrap]; the average weighs the benchmarks equally; the difference to the base "
        "model is a paired bootstrap over the same problems.", "", *main_table(out, cfg.seed), "",
        "## Stages, commands and wall time", "", "| stage | minutes | command |", "| --- | --- | --- |",
        *[f"| {s['name']} | {s['seconds'] / 60:.1f} | `{s['command']}` |" for s in stages],
        f"| total | {total / 60:.1f} | (last attempt of each stage; model loading included) |", "",
        "## Resizing", "", "Every size is a flag of experiments/paper.py (or its preset, --scale smoke | cpu | gpu): "
        + ", ".join("--" + k.replace("_", "-") for k in SCALES["cpu"]) + ". Settings of this run: experiment.json.", ""]
    path = out / "report.md"
    write_atomic(path, "\n".join(text))
    return path


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    config = Config(**json.loads((folder / "experiment.json").read_text()))
    stages_done = [json.loads(p.read_text()) for p in sorted((folder / "stages").glob("*.json"),
                                                              key=lambda p: p.stat().st_mtime)]
    print(write_report(config, folder, stages_done))
