"""Reports read from the files the stages wrote (metrics.jsonl, stats.json, summary.json):
`write_pairs_report` for synthesize.py's pairs files (also `synthesize.py --stats-only`), and
`write_report`, one report.md for a run of all four stages (plots are linked, not redrawn):

    python -m pns_mini.report runs/demo        # expects generator/ pairs-*/ dpo/ eval-base/ eval-dpo/
"""
from __future__ import annotations

import difflib
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from .data import ANSWER_INSTRUCTION, DataError, iter_jsonl_tolerant, write_atomic

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


def _mean_of(values) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _images(folder: Path, root: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(root)})" for p in sorted((folder / "plots").glob("*.png"))]


# ---------------------------------------------------------------------------------------------
# Stage 2: the negatives' quality per source (the Figure 1 comparison), from pairs files alone
# ---------------------------------------------------------------------------------------------
def text_of(field) -> str:
    """A pair side's text: a plain string or the content of its last message."""
    return field if isinstance(field, str) else field[-1]["content"]


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


PAIR_FIELDS = ("id", "source", "chosen", "rejected", "candidates", "qualified", "rm_raw_chosen", "rm_raw_rejected",
               "judge_chosen", "judge_rejected", "chosen_tokens", "rejected_tokens")  # what source_stats reads


def source_stats(pairs: list[dict], skipped: list[dict]) -> dict:
    both = [r for r in pairs if r["rm_raw_rejected"] is not None and r["rm_raw_chosen"] is not None]
    with_pair = {r["id"] for r in pairs}
    per_problem = list({r["id"]: (r["qualified"], r["candidates"]) for r in pairs}.values()) + \
        [(r["verified_wrong"], r["candidates"]) for r in skipped]
    candidates = sum(n for _, n in per_problem)
    return {
        "problems_tried": len(with_pair | {r["id"] for r in skipped}), "problems_with_pair": len(with_pair),
        "pairs": len(pairs), "skipped": dict(Counter(r["reason"] for r in skipped)), "candidates": candidates,
        "verified_wrong_rate": sum(q for q, _ in per_problem) / candidates if candidates else None,
        "rm_raw_rejected": _mean_of(r["rm_raw_rejected"] for r in pairs),
        "rm_raw_chosen": _mean_of(r["rm_raw_chosen"] for r in pairs),
        "rejected_ge_chosen": _mean_of(float(r["rm_raw_rejected"] >= r["rm_raw_chosen"]) for r in both),
        "judge_rejected": _mean_of(r["judge_rejected"] for r in pairs),
        "judge_chosen": _mean_of(r["judge_chosen"] for r in pairs),
        "tokens_chosen": _mean_of(r["chosen_tokens"] for r in pairs),
        "tokens_rejected": _mean_of(r["rejected_tokens"] for r in pairs),
        "similarity": _mean_of(similarity(text_of(r["chosen"]), text_of(r["rejected"])) for r in pairs),
    }


def collect_stats(pair_files: list[Path]) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """({source: stats}, {source: pair rows}) over pairs files; each file's skipped.jsonl (same
    folder) counts its problems without a pair. Two files with one source are told apart by folder."""
    stats, rows_by = {}, {}
    for path in pair_files:
        if not path.exists():
            raise FileNotFoundError(f"{path}: pairs file not found")
        pairs = list(iter_jsonl_tolerant(path))
        skipped = list(iter_jsonl_tolerant(path.parent / "skipped.jsonl"))
        for i, row in enumerate(pairs, 1):
            missing = [k for k in PAIR_FIELDS if k not in row]
            if missing:
                raise DataError(f"{path}:{i}: no field {missing[0]!r}: the stats read pairs files written by "
                                f"synthesize.py, whose rows carry {', '.join(PAIR_FIELDS)}")
        for source in sorted({r["source"] for r in pairs + skipped}):
            key = source if source not in stats else f"{source} ({path.parent.name})"
            sel = [r for r in pairs if r["source"] == source]
            stats[key] = source_stats(sel, [r for r in skipped if r["source"] == source])
            rows_by[key] = sel
    return stats, rows_by


PAIRS_LEGEND = (
    "pairs/tried = problems with a pair / problems tried; wrong/cand = share of sampled candidates that "
    "were well-formed and verified wrong; RM = reward-model raw (logit) score, mean over pairs; "
    "rej>=cho = share of pairs whose rejected scores at least as high as its chosen (the paper's Fig. 1: "
    "plausible negative +3.34, correct +3.21, rejection-sampled -3.13); judge = the CoT judge's score "
    "in [0, 1]; tok = mean tokens; similarity = difflib word-sequence ratio of chosen and rejected.")


STATS_COLUMNS = {"wrong/cand": "verified_wrong_rate", "RM rejected": "rm_raw_rejected", "RM chosen": "rm_raw_chosen",
                 "rej>=cho": "rejected_ge_chosen", "judge rej": "judge_rejected", "judge cho": "judge_chosen",
                 "tok cho": "tokens_chosen", "tok rej": "tokens_rejected", "similarity": "similarity"}


def stats_table(stats: dict[str, dict]) -> str:
    cols = ["pairs/tried", *STATS_COLUMNS]
    lines = ["| source | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for source, s in stats.items():
        vals = [f"{s.get('pairs')}/{s.get('problems_tried')}", *(s.get(k) for k in STATS_COLUMNS.values())]
        lines.append(f"| {source} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def write_pairs_report(out: Path, pair_files: list[Path]) -> dict:
    """stats.json, report.md and plots/rm_scores.png in `out` for these pairs files (synthesize.py).
    A folder holding another synthesis run is refused: its own stats would be overwritten."""
    own = out / "pairs.jsonl"
    if own.exists() and own.resolve() not in [p.resolve() for p in pair_files]:
        raise DataError(f"{out}: holds a synthesis run (pairs.jsonl) whose stats.json and report.md this would "
                        f"overwrite; give another --output-dir")
    stats, rows_by = collect_stats(pair_files)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    table = stats_table(stats)
    skips = "\n".join(f"- {src}: {', '.join(f'{k} {v}' for k, v in s['skipped'].items()) or 'none'}"
                      for src, s in stats.items())
    write_atomic(out / "report.md", f"# Preference pairs\n\nFiles: {', '.join(str(p) for p in pair_files)}\n\n"
                                    f"{table}\n\n{PAIRS_LEGEND}\n\nProblems skipped (reason: count):\n{skips}\n")
    print(table)
    plot_rm_scores(rows_by, out / "plots" / "rm_scores.png")
    return stats


def plot_rm_scores(rows_by: dict[str, list[dict]], target: Path) -> Path | None:
    """One panel per source: histograms of the RM raw score of chosen and of rejected."""
    rows_by = {s: r for s, r in rows_by.items() if any(x["rm_raw_rejected"] is not None for x in r)}
    if not rows_by:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(rows_by), figsize=(4 * len(rows_by), 3.2), squeeze=False, sharex=True)
    for ax, (source, rows) in zip(axes[0], rows_by.items()):
        values = [[r[key] for r in rows if r[key] is not None] for key in ("rm_raw_chosen", "rm_raw_rejected")]
        ax.hist(values, bins=20, label=["chosen", "rejected"])  # shared bins, bars side by side
        ax.set_title(source)
        ax.set_xlabel("reward model score (logit)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def generator_section(run: Path, root: Path) -> list[str]:
    rows = list(iter_jsonl_tolerant(run / "metrics.jsonl"))
    if not rows:
        return ["## Stage 1: negative generator", "", f"No metrics in `{run}`.", ""]
    k = max(1, min(2, len(rows) // 2))
    first, last = rows[:k], rows[-k:]
    out = ["## Stage 1: negative generator (reverse-RL GRPO)", "",
           f"{len(rows)} steps. Means over the first and last {k} step(s):", "",
           "| metric | first | last |", "| --- | --- | --- |"]
    out += [f"| {key} | {_fmt(_mean_of(r.get(key) for r in first))} | {_fmt(_mean_of(r.get(key) for r in last))} |"
            for key in REWARD_KEYS if any(r.get(key) is not None for r in rows)]
    return out + [""] + [i for i in _images(run, root) if "reward" in i or "time" in i] + [""]


def pairs_section(pair_dirs: list[Path], root: Path) -> list[str]:
    stats, images = {}, []
    for d in pair_dirs:
        for source, s in (_json(d / "stats.json") or {}).items():
            stats[source if source not in stats else f"{source} ({d.name})"] = s
        images += _images(d, root)
    out = ["## Stage 2: negatives by source", ""]
    if not stats:
        return out + ["No stats.json in " + ", ".join(f"`{d}`" for d in pair_dirs) + ".", ""]
    return out + [stats_table(stats), "", PAIRS_LEGEND, ""] + images + [""] + example_pair(pair_dirs)


def example_pair(pair_dirs: list[Path], chars: int = 600) -> list[str]:
    """The first folder's best-ranked pair (highest composite reward of its rejected side), shown."""
    rows = [r for d in pair_dirs[:1] for r in iter_jsonl_tolerant(d / "pairs.jsonl")]
    if not rows:
        return []
    r = max(rows, key=lambda r: r.get("rejected_total") or 0.0)
    question = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
    quote = lambda text: "\n".join("> " + line for line in text.strip()[:chars].splitlines())  # noqa: E731
    return [f"Example ({r.get('source')}, problem `{r.get('id')}`, gold {r.get('gold')}): the rejected side answers "
            f"{r.get('rejected_answer')}, RM {_fmt(r.get('rm_raw_rejected'))} "
            f"vs chosen {_fmt(r.get('rm_raw_chosen'))}.",
            "", quote(question.split(ANSWER_INSTRUCTION)[0]), ">", "> **rejected:**", quote(text_of(r["rejected"])), ""]


def stage_times(root: Path) -> list[str]:
    """Wall time per stage, from the files each stage wrote (not measured here)."""
    rows = []
    gen = list(iter_jsonl_tolerant(root / "generator" / "metrics.jsonl"))
    if gen:
        rows.append(("1 generator (GRPO)", f"{len(gen)} steps", sum(r.get("time/step", 0) for r in gen)))
    for d in sorted(p for p in root.glob("pairs-*") if p.is_dir()):
        m = list(iter_jsonl_tolerant(d / "metrics.jsonl"))
        if m:
            rows.append((f"2 synthesize {d.name.removeprefix('pairs-')}", f"{m[-1]['pairs']} pairs / "
                         f"{sum(r['problems'] for r in m)} problems", sum(r["seconds"] for r in m)))
    dpo = list(iter_jsonl_tolerant(root / "dpo" / "metrics.jsonl"))
    if dpo:
        rows.append(("3 DPO", f"{len(dpo)} steps", sum(r.get("seconds_per_step", 0) for r in dpo)))
    for name in ("eval-base", "eval-dpo"):
        summ = (_json(root / name / "summary.json") or {}).get("benchmarks", {})
        if summ:
            rows.append((f"4 evaluate {name.removeprefix('eval-')}", f"{sum(b['n'] for b in summ.values())} problems",
                         sum(b["n"] * b.get("seconds_per_problem", 0) for b in summ.values())))
    if not rows:
        return []
    return (["| stage | work | minutes |", "| --- | --- | --- |"]
            + [f"| {a} | {b} | {t / 60:.1f} |" for a, b, t in rows]
            + [f"| total (model loading not included) | | {sum(t for *_, t in rows) / 60:.1f} |", ""])


def dpo_section(run: Path, root: Path) -> list[str]:
    rows = list(iter_jsonl_tolerant(run / "metrics.jsonl"))
    if not rows:
        return ["## Stage 3: DPO", "", f"No metrics in `{run}` (no pairs to train on?).", ""]
    cfg = _json(run / "config.json") or {}
    setup = f" on `{cfg['pairs']}`, {cfg.get('loss_type')} loss, beta {cfg.get('beta')}" if cfg.get("pairs") else ""
    out = ["## Stage 3: DPO on (correct, plausible-wrong)", "", f"{len(rows)} steps{setup}.", "",
           "| metric | first step | last step |", "| --- | --- | --- |"]
    out += [f"| {key} | {_fmt(rows[0].get(key))} | {_fmt(rows[-1].get(key))} |" for key in DPO_KEYS if key in rows[0]]
    if any(r.get("warning/chosen_logp_drop") for r in rows):
        out += ["", "**Warning:** the chosen log-prob fell well below the reference's (see `--rpo-alpha`)."]
    return out + [""] + _images(run, root) + [""]


def eval_section(before: Path, after: Path) -> list[str]:
    b, a = _json(before / "summary.json"), _json(after / "summary.json")
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
    lines += stage_times(root)
    lines += generator_section(root / "generator", root)
    lines += pairs_section(sorted(p for p in root.glob("pairs-*") if p.is_dir()), root)
    lines += dpo_section(root / "dpo", root)
    lines += eval_section(root / "eval-base", root / "eval-dpo")
    write_atomic(root / "report.md", "\n".join(lines) + "\n")
    return root / "report.md"


if __name__ == "__main__":
    print(write_report(sys.argv[1] if len(sys.argv) > 1 else "runs/demo").read_text())
