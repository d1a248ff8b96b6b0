"""The pipeline report: one `report.md` for a run of all four stages, every number read from the
files the stages wrote (metrics.jsonl, stats.json, summary.json); plots are linked, not redrawn.

    python -m pns_mini.report runs/demo        # expects generator/ pairs-*/ dpo/ eval-base/ eval-dpo/
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .data import iter_jsonl_tolerant

REWARD_KEYS = ["reward/total", "reward/format", "reward/accuracy", "reward/reward_model", "reward/judge",
               "rate/format", "rate/wrong_well_formed", "rate/truncated", "length/mean", "kl", "time/step"]
DPO_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected", "grad_norm"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _images(folder: Path, root: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(root)})" for p in sorted((folder / "plots").glob("*.png"))]


def generator_section(run: Path, root: Path) -> list[str]:
    rows = list(iter_jsonl_tolerant(run / "metrics.jsonl"))
    if not rows:
        return ["## Stage 1: negative generator", "", f"No metrics in `{run}`.", ""]
    k = max(1, min(2, len(rows) // 2))
    first, last = rows[:k], rows[-k:]
    out = ["## Stage 1: negative generator (reverse-RL GRPO)", "",
           f"{len(rows)} steps. Means over the first and last {k} step(s):", "",
           "| metric | first | last |", "| --- | --- | --- |"]
    out += [f"| {key} | {_fmt(_mean(first, key))} | {_fmt(_mean(last, key))} |" for key in REWARD_KEYS
            if _mean(rows, key) is not None]
    return out + [""] + [i for i in _images(run, root) if "reward" in i or "time" in i] + [""]


def pairs_section(pair_dirs: list[Path], root: Path) -> list[str]:
    out = ["## Stage 2: negatives by source", "",
           "RM = the reward model's raw score (logit scale); rej >= cho = share of pairs whose rejected "
           "solution scores at least as high as the chosen one (the paper's Figure 1: a plausible negative "
           "+3.34, the correct solution +3.21, a rejection-sampled negative -3.13).", "",
           "| source | pairs / problems | RM rejected | RM chosen | rej >= cho | judge rejected | judge chosen "
           "| similarity |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    images = []
    for d in pair_dirs:
        stats_file = d / "stats.json"
        if not stats_file.exists():
            out.append(f"| `{d.name}` | no stats.json | | | | | | |")
            continue
        for source, s in json.loads(stats_file.read_text()).items():
            out.append(f"| {source} | {s.get('pairs')} / {s.get('problems_tried')} | {_fmt(s.get('rm_raw_rejected'))} "
                       f"| {_fmt(s.get('rm_raw_chosen'))} | {_fmt(s.get('rejected_ge_chosen'))} "
                       f"| {_fmt(s.get('judge_rejected'))} | {_fmt(s.get('judge_chosen'))} | {_fmt(s.get('similarity'))} |")
        images += _images(d, root)
    return out + [""] + images + [""]


def dpo_section(run: Path, root: Path) -> list[str]:
    rows = list(iter_jsonl_tolerant(run / "metrics.jsonl"))
    if not rows:
        return ["## Stage 3: DPO", "", f"No metrics in `{run}` (no pairs to train on?).", ""]
    out = ["## Stage 3: DPO on (correct, plausible-wrong)", "", f"{len(rows)} steps.", "",
           "| metric | first step | last step |", "| --- | --- | --- |"]
    out += [f"| {key} | {_fmt(rows[0].get(key))} | {_fmt(rows[-1].get(key))} |" for key in DPO_KEYS if key in rows[0]]
    if any(r.get("warning/chosen_logp_drop") for r in rows):
        out += ["", "**Warning:** the chosen log-prob fell well below the reference's (see `--rpo-alpha`)."]
    return out + [""] + _images(run, root) + [""]


def eval_section(before: Path, after: Path) -> list[str]:
    def load(p):
        f = p / "summary.json"
        return json.loads(f.read_text()) if f.exists() else None
    b, a = load(before), load(after)
    if not b or not a:
        return ["## Stage 4: evaluation", "", "Missing summary.json (before or after).", ""]
    pct = lambda s: f"{100 * s['accuracy']:.1f} ({100 * s['ci_low']:.1f}-{100 * s['ci_high']:.1f})"  # noqa: E731
    out = ["## Stage 4: accuracy before vs after DPO", "",
           "Accuracy % with a 95% bootstrap interval; greedy decoding.", "",
           "| benchmark | n | before | after | no answer before / after |", "| --- | --- | --- | --- | --- |"]
    for name, sb in b["benchmarks"].items():
        sa = a["benchmarks"].get(name)
        if sa:
            out.append(f"| {name} | {sb['n']} | {pct(sb)} | {pct(sa)} | "
                       f"{100 * sb['no_answer_rate']:.0f}% / {100 * sa['no_answer_rate']:.0f}% |")
    out.append(f"| **average** | | {pct(b['average'])} | {pct(a['average'])} | |")
    return out + [""]


def write_report(root: str | Path) -> Path:
    root = Path(root)
    lines = ["# PNS pipeline report", "",
             f"Run folder `{root}`. Every number below is read from the files the stages wrote.", ""]
    lines += generator_section(root / "generator", root)
    lines += pairs_section(sorted(p for p in root.glob("pairs-*") if p.is_dir()), root)
    lines += dpo_section(root / "dpo", root)
    lines += eval_section(root / "eval-base", root / "eval-dpo")
    target = root / "report.md"
    target.write_text("\n".join(lines) + "\n")
    return target


if __name__ == "__main__":
    print(write_report(sys.argv[1] if len(sys.argv) > 1 else "runs/demo").read_text())
