"""Stage 4 of PNS: accuracy of a model (+ an optional LoRA adapter) on math benchmarks, one record
per sample, bootstrap intervals, and pass@k / maj@k when several samples are drawn.

Reads: problems via data.load_problems (benchmark files or the generated `offline` set), the model
via modeling.load_model_and_tokenizer. Writes --output-dir: config.json (a rerun into the folder
must keep the decoding); samples.jsonl, one row per (problem, sample), append-only, flushed per row:
benchmark, id, sample, prompt, completion, extracted, gold, verdict (correct | wrong | no_answer |
unparseable), correct, how, num_tokens, truncated, seconds; metrics.jsonl, one row per benchmark;
summary.json {"benchmarks": {name: {n, accuracy, ci_low, ci_high, ...}}, "average", "stamp"}; report.md.

Examples:
  python evaluate.py --model smollm2-135m --benchmarks all --limit 50 --output-dir runs/eval-base
  python evaluate.py --benchmarks offline --num-samples 8 --temperature 0.6 --output-dir runs/eval-k8
  python evaluate.py --output-dir runs/eval-dpo --regrade      # after a fix to pns_mini/grading.py

Method choices:
- Greedy by default (temperature 0, one sample), the usual report for small math models.
- Answers are read as the Qwen2.5-Math harness and Math-Verify read them (--extraction eval; the
  reward and synthesis read box-first, strict). No extracted answer is "no_answer" (never "wrong"),
  one that cannot be parsed or times out "unparseable"; neither counts as correct.
- accuracy = mean over problems of the fraction of correct samples (= the unbiased pass@1), with a
  95% percentile bootstrap over PROBLEMS (for the average, stratified by benchmark). pass@j for
  j = 2, 4, ... up to k (Chen et al. 2021); maj@k votes with equivalent answers grouped by the grader.
- Batches hold batch_size // k consecutive problems, all k samples of a problem together; greedy
  results do not depend on the batch size (tested). Sampling is seeded per problem (--seed,
  benchmark, id), so a problem's samples are the same in any batch, resumed or not.
- Resume: a rerun skips the problems in samples.jsonl and redoes one with fewer than k rows; other
  decoding settings, a changed prompt or another --extraction in the same folder are refused.
  --regrade re-grades the saved completions with --extraction (golds re-read where the benchmark loads).
Deviation from the paper: its evaluation harness (prompt, grader, sampling) is not reproduced;
numbers compare our runs with each other (same template hash and grader), not with its tables.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pns_mini import data, generation, grading, modeling, runs
from pns_mini.data import write_atomic, write_jsonl
from pns_mini.config import check_flags, main_guard, save_config


@dataclass
class Config:
    model: str = modeling.DEFAULT_MODEL
    """Model to evaluate: the alias smollm2-135m, a save_pretrained folder, an adapter folder, or a Hub id."""
    adapter: str | None = None
    """A LoRA adapter folder applied on top of --model (e.g. runs/dpo/final); none = the model alone."""
    benchmarks: str = "all"
    """Comma list of: all (the seven benchmarks, data.ALL_BENCHMARKS), offline, a benchmark name, a JSONL path."""
    data_dir: str | None = None
    """Folder holding benchmarks/ (default: $PNS_MINI_DATA, ../shared/data, ./data)."""
    limit: int | None = None
    """Evaluate the first N problems of each benchmark (file order); none = all."""
    max_completion_length: int = 1024
    """Most new tokens per completion (256-4096); a completion that hits it is counted as truncated."""
    num_samples: int = 1
    """Samples per problem, k (1 for greedy; 4-64 for pass@k and maj@k with --temperature > 0)."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy (0.6-1.0 for k > 1)."""
    top_p: float = 1.0
    """Nucleus sampling mass (0-1]; ignored when greedy."""
    enable_thinking: bool = False
    """Qwen3-style templates: think in <think>...</think>, answer after it (off: an empty think block)."""
    batch_size: int = 8
    """Completions generated at once (4-64 on a GPU; 8 on a CPU)."""
    seed: int = 0
    """Seed of the sampling and of the bootstrap resamples."""
    output_dir: str = "runs/eval"
    """Run folder; rerunning into it resumes."""
    regrade: bool = False
    """Recompute verdicts from the saved completions (no generation) and rewrite the summary."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples for the 95% interval (1000-10000)."""
    extraction: str = "eval"
    """How answers are read: eval (as Qwen2.5-Math / Math-Verify) or strict (box first); --regrade may change it."""

    def __post_init__(self):
        check_flags(self, {1: ("num_samples", "batch_size", "max_completion_length", "bootstrap_resamples"),
                           0: ("limit",)}, {"extraction": grading.EXTRACTIONS})
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"--num-samples {self.num_samples} with greedy decoding gives {self.num_samples} "
                             f"identical samples: set --temperature > 0 (e.g. 0.6)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not benchmark_names(self.benchmarks):
            raise ValueError("--benchmarks is empty (accepted: all, offline, a benchmark name, a JSONL path)")


# Settings that change what a completion is: a rerun into the same folder must keep them.
DECODING_FIELDS = ("model", "adapter", "max_completion_length", "num_samples", "temperature", "top_p", "seed")


class RunMismatchError(data.DataError):
    """A rerun into a folder whose samples were made with other settings."""


def benchmark_names(spec: str) -> list[str]:
    """'all,offline' -> the seven benchmarks then offline; order kept, duplicates dropped."""
    parts = [p.strip() for p in spec.split(",")]
    return list(dict.fromkeys(name for p in parts if p for name in (data.ALL_BENCHMARKS if p == "all" else [p])))


def load_records(path: Path, k: int) -> list[dict]:
    """samples.jsonl's rows minus problems with fewer than k (a killed run's), rewritten: those are sampled again."""
    data.repair_torn_tail(path)
    rows = list(data.iter_jsonl_tolerant(path))
    counts = Counter((r["benchmark"], r["id"]) for r in rows)
    complete = [r for r in rows if counts[(r["benchmark"], r["id"])] == k]
    if len(complete) < len(rows):
        partial = sorted({key for key, c in counts.items() if c != k})
        print(f"{path}: dropping {len(rows) - len(complete)} rows of {len(partial)} incomplete problems "
              f"(e.g. {partial[0]}); they are generated again")
        write_jsonl(path, complete)
    return complete


def check_same_grading(cfg: Config, config_path: Path) -> None:
    """Refuse to add rows graded one way to rows graded another (folders from before --extraction: strict)."""
    saved = runs.read_config(config_path).get("extraction", "strict") if config_path.exists() else cfg.extraction
    if saved != cfg.extraction:
        raise RunMismatchError(f"{config_path}: the samples here were graded with --extraction {saved}, now "
                               f"{cfg.extraction}; pass --extraction {saved}, or regrade them all first with "
                               f"--regrade --extraction {cfg.extraction}")


def grade_fields(completion: str, gold: str, extraction: str) -> dict:
    """The grading columns of a sample row; how = what decided: string, number, math_verify, timeout..."""
    result = grading.grade(completion, gold, extraction=extraction)
    return {"extracted": result.answer, "gold": gold, "verdict": result.verdict,
            "correct": result.verdict == "correct", "how": result.how}


def same_answer(a: str, b: str) -> bool:
    """Two extracted answers (the rows' `extracted`) are one vote when the grader, taking `a` as gold, says correct."""
    return grading.grade_answer(b, a).verdict == "correct"


# --- Statistics: pure functions, tested by hand in tests/test_evaluate.py -------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k), computed as a product so that large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every size-k subset holds a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_means(values, resamples: int, seed) -> np.ndarray:
    """Means of `resamples` resamples (with replacement, same size) of `values`; (resamples,)."""
    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    return x[idx].mean(axis=1)


def bootstrap_ci(values, resamples: int = 1000, seed=0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per problem)."""
    if len(values) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(bootstrap_means(values, resamples, seed), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def majority_vote(answers: list[str | None], equivalent) -> int | None:
    """Index of a sample of the most frequent answer, grouping answers for which `equivalent(a, b)`
    holds (a = the group's first member); None when no sample has an answer. Ties: the group seen first."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            rep = answers[group[0]]
            if answer == rep or equivalent(rep, answer):
                group.append(i)
                break
        else:
            groups.append([i])
    return max(groups, key=len)[0] if groups else None  # max keeps the first of equal-sized groups


def summarize(rows: list[dict], resamples: int, seed: int) -> dict:
    """{"benchmarks": {name: stats}, "average": stats} from the sample rows. Rates are fractions."""
    by_bench: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_bench[r["benchmark"]][r["id"]].append(r)
    benchmarks, boot = {}, []
    for name, problems in by_bench.items():
        groups = [sorted(g, key=lambda r: r["sample"]) for g in problems.values()]
        scores = [sum(r["correct"] for r in g) / len(g) for g in groups]  # per problem
        rng_seed = [seed, zlib.crc32(name.encode())]  # independent resamples per benchmark
        boot.append(bootstrap_means(scores, resamples, rng_seed))
        lo, hi = bootstrap_ci(scores, resamples, rng_seed)
        samples = [r for g in groups for r in g]
        stats = {
            "n": len(groups), "samples": len(samples), "accuracy": float(np.mean(scores)), "ci_low": lo, "ci_high": hi,
            "no_answer_rate": float(np.mean([r["verdict"] == "no_answer" for r in samples])),
            "unparseable_rate": float(np.mean([r["verdict"] == "unparseable" for r in samples])),
            "truncation_rate": float(np.mean([r["truncated"] for r in samples])),
            "mean_tokens": float(np.mean([r["num_tokens"] for r in samples])),
            "seconds_per_problem": float(sum(r.get("seconds", 0.0) for r in samples) / len(groups)),
        }
        k = min(len(g) for g in groups)
        if k > 1:
            for j in [2 ** e for e in range(1, k.bit_length()) if 2 ** e < k] + [k]:
                stats[f"pass@{j}"] = float(np.mean([pass_at_k(len(g), sum(r["correct"] for r in g), j)
                                                    for g in groups]))
            votes = [majority_vote([r["extracted"] for r in g], same_answer) for g in groups]
            stats[f"maj@{k}"] = float(np.mean([v is not None and g[v]["correct"] for v, g in zip(votes, groups)]))
        benchmarks[name] = stats
    average = {}
    if benchmarks:  # unweighted: every benchmark counts once, whatever its size
        keys = [key for key in next(iter(benchmarks.values())) if all(key in s for s in benchmarks.values())]
        average = {key: float(np.mean([s[key] for s in benchmarks.values()])) for key in keys}
        average.update({key: sum(s[key] for s in benchmarks.values()) for key in ("n", "samples")})  # totals
        # stratified bootstrap: resample each benchmark on its own, average the resampled means
        average["ci_low"], average["ci_high"] = (float(q) for q in np.quantile(np.mean(boot, axis=0), [0.025, 0.975]))
    return {"benchmarks": benchmarks, "average": average}


# --- Stamp and report -----------------------------------------------------------------------------
def make_stamp(cfg: Config) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None
    return {
        "model": cfg.model, "adapter": cfg.adapter, "prompt_template_hash": data.prompt_template_hash(),
        "decoding": {"greedy": cfg.temperature == 0, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "num_samples": cfg.num_samples, "max_completion_length": cfg.max_completion_length,
                     "batch_size": cfg.batch_size},
        "extraction": cfg.extraction, "seed": cfg.seed, "bootstrap_resamples": cfg.bootstrap_resamples,
        "versions": {pkg: version(pkg) for pkg in ("torch", "transformers", "peft", "math-verify")},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def render_report(summary: dict) -> str:
    st, d = summary["stamp"], summary["stamp"]["decoding"]
    decoding = "greedy" if d["greedy"] else f"temperature {d['temperature']}, top-p {d['top_p']}"
    lines = [
        f"# Evaluation of {st['model']}" + (f" + {st['adapter']}" if st["adapter"] else ""), "",
        f"- model: `{st['model']}`; adapter: `{st['adapter']}`",
        f"- prompt template hash: `{st['prompt_template_hash']}`",
        f"- decoding: {decoding}, {d['num_samples']} sample(s) per problem, at most {d['max_completion_length']} "
        f"new tokens, batch size {d['batch_size']}",
        f"- answers read with `{st.get('extraction', 'strict')}` extraction (grading.extract_answer)",
        f"- seed {st['seed']}; 95% interval: percentile bootstrap over problems, {st['bootstrap_resamples']} resamples",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items()),
        f"- date: {st['date']}" + (" (verdicts regraded from saved completions)" if st.get("regraded") else ""), "",
    ]
    extra = [key for key in summary["average"] if key.startswith(("pass@", "maj@"))]
    header = ["benchmark", "n", "accuracy % (95% CI)", "no answer %", "truncated %", "mean tokens",
              *(f"{k} %" for k in extra)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    rows = [*summary["benchmarks"].items()] + ([("**average** (unweighted)", summary["average"])]
                                               if summary["average"] else [])
    for name, s in rows:
        cells = [name, str(s["n"]), f"{pct(s['accuracy'])} ({pct(s['ci_low'])}-{pct(s['ci_high'])})",
                 pct(s["no_answer_rate"]), pct(s["truncation_rate"]), f"{s['mean_tokens']:.0f}"]
        cells += [pct(s[key]) if key in s else "" for key in extra]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rates are over samples; accuracy is the mean over problems of the fraction of correct samples. "
              "no answer = nothing extractable; mean tokens include the EOS token."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], stamp: dict, resamples: int, seed: int) -> dict:
    summary = {**summarize(rows, resamples, seed), "stamp": stamp}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_jsonl(out / "metrics.jsonl", ({"benchmark": name, **s} for name, s in summary["benchmarks"].items()))
    write_atomic(out / "report.md", render_report(summary))
    print((out / "report.md").read_text())
    return summary


# --- Regrade: new verdicts for saved completions, no model ----------------------------------------
def regrade(cfg: Config, out: Path) -> dict:
    samples_path, config_path = out / "samples.jsonl", out / "config.json"
    if not samples_path.exists() or not config_path.exists():
        raise FileNotFoundError(f"{out}: --regrade needs samples.jsonl and config.json from an earlier run")
    saved = json.loads(config_path.read_text())
    run_cfg = dataclasses.replace(cfg, **{k: saved[k] for k in DECODING_FIELDS + ("batch_size",) if k in saved},
                                  data_dir=cfg.data_dir or saved.get("data_dir"))
    data.repair_torn_tail(samples_path)
    rows = data.read_jsonl(samples_path, required=("benchmark", "id", "sample", "completion", "gold"))
    golds = {}
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        try:  # the current loader's gold, so a fix to the gold parsing takes effect too
            golds.update({(name, p["id"]): p["gold"] for p in data.load_problems(name, run_cfg.data_dir)})
        except data.DataError as e:
            print(f"regrade: keeping the saved gold of {name} ({e})")
    changed, new_gold = 0, 0
    for r in tqdm(rows, desc="regrade", unit="sample"):
        gold = golds.get((r["benchmark"], r["id"]), r["gold"])
        new_gold += gold != r["gold"]
        fields = grade_fields(r["completion"], gold, cfg.extraction)
        changed += fields["verdict"] != r.get("verdict")
        r.update(fields)
    write_jsonl(samples_path, rows)
    # reruns grade alike
    write_atomic(config_path, json.dumps({**saved, "extraction": cfg.extraction}, indent=2) + "\n")
    print(f"regraded {len(rows)} samples with --extraction {cfg.extraction}: {changed} verdicts changed, "
          f"{new_gold} golds updated")
    stamp = {**make_stamp(run_cfg), "regraded": True}  # date = now; the completions are older
    return write_outputs(out, load_records(samples_path, run_cfg.num_samples), stamp, cfg.bootstrap_resamples,
                         run_cfg.seed)


# --- Main: setup -> generate the pending problems -> grade -> summary and report ------------------
def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    if cfg.regrade:
        return regrade(cfg, out)
    samples_path, config_path = out / "samples.jsonl", out / "config.json"
    if samples_path.exists() and samples_path.stat().st_size:  # samples made: decoding and grading may not change
        runs.check_same_settings(config_path, {k: getattr(cfg, k) for k in DECODING_FIELDS}, "samples",
                                 RunMismatchError)
        check_same_grading(cfg, config_path)
    k = cfg.num_samples

    # --- setup: problems, what samples.jsonl holds (resume), the model; bad input fails here, before any write ---
    problems = {name: data.load_problems(name, cfg.data_dir, cfg.limit) for name in benchmark_names(cfg.benchmarks)}
    recorded = {(r["benchmark"], r["id"]): r["prompt"] for r in load_records(samples_path, k)}
    n_pending = sum((name, p["id"]) not in recorded for name, ps in problems.items() for p in ps)
    print(f"{out}: {len(recorded)} problems already recorded, {n_pending} to generate ({k} sample(s) each)")
    todo = [(name, p) for name, ps in problems.items() for p in ps]
    if n_pending:
        model, tokenizer = modeling.load_model_and_tokenizer(cfg.model, adapter=cfg.adapter)
        def prompt_of(p):
            return data.format_prompt(tokenizer, p["question"], enable_thinking=cfg.enable_thinking)

        for name, p in todo:  # a changed template would mix two prompts in one table
            saved = recorded.get((name, p["id"]))
            if saved is not None and saved != prompt_of(p):
                raise RunMismatchError(f"{samples_path}: the recorded prompt of {p['id']} differs from the "
                                       f"current one (template {data.prompt_template_hash()}); "
                                       "use another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_path)  # every check passed: the folder is this run's
    runs.remove_stale_temps(out)  # a killed write_atomic's .samples.jsonl.tmp-PID

    if n_pending:
        per_batch = max(1, cfg.batch_size // k)  # problems per batch: all k samples of a problem together
        bar = tqdm(total=n_pending, desc="evaluate", unit="problem", dynamic_ncols=True)
        correct, seen = 0, 0
        for start in range(0, len(todo), per_batch):  # fixed boundaries: a rerun finds the same batches
            batch = [(name, p) for name, p in todo[start:start + per_batch] if (name, p["id"]) not in recorded]
            if not batch:
                continue
            # --- generation: k samples per problem, KV-cached, rows prompt-major ---
            prompts = [prompt_of(p) for _, p in batch]
            t0 = time.perf_counter()  # seeded per problem: a rerun that redoes a problem draws its samples again
            comp = generation.sample(model, tokenizer, prompts, num_samples=k, temperature=cfg.temperature,
                                     top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length,
                                     batch_size=cfg.batch_size, seed=[f"{cfg.seed}/{n}/{p['id']}" for n, p in batch])
            seconds = time.perf_counter() - t0
            lengths = comp.lengths.tolist()  # (N,) completion tokens, EOS included
            # --- grading: one row per sample, flushed as it is written ---
            for i, text in enumerate(comp.texts):
                name, p = batch[comp.prompt_index[i]]
                row = {"benchmark": name, "id": p["id"], "sample": i % k, "prompt": prompts[comp.prompt_index[i]],
                       "completion": text, **grade_fields(text, p["gold"], cfg.extraction), "num_tokens": lengths[i],
                       "truncated": bool(comp.truncated[i]), "seconds": seconds / len(comp.texts)}
                data.append_jsonl(samples_path, row)
                correct, seen = correct + row["correct"], seen + 1
            bar.update(len(batch))
            bar.set_postfix(bench=name, acc=f"{correct / seen:.3f}", tok_s=f"{sum(lengths) / seconds:.1f}")
        bar.close()

    # --- summary and report over everything recorded in the folder ---
    summary = write_outputs(out, load_records(samples_path, k), make_stamp(cfg), cfg.bootstrap_resamples, cfg.seed)
    print(f"done: {out} (samples {samples_path}, summary {out / 'summary.json'}, report {out / 'report.md'})")
    return summary


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
