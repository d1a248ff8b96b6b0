"""Shared plumbing of the benchmarks against TRL: model resolution, the memory probe, the
worker subprocesses, and the table.

Each side (ours, TRL) runs in its own fresh Python process (`--worker ours|trl`), so peak memory
is that side's alone and neither warms a cache for the other; the parent alternates the two
(ours first on even repeats, TRL first on odd ones) so that drifting machine load hits both.
A worker prints one JSON line (prefixed by RESULT_TAG) with its per-step times and memory.

Time: wall seconds and CPU seconds (time.process_time, all threads of the worker) per step and
per phase (`PhaseTimer`). On this shared 2-core machine, loaded by other jobs, wall time is
mostly waiting for a core and swings 2x between identical steps; CPU time is the work done and
is the steadier basis for the ratio (it still includes OpenMP threads spinning while they wait).

Memory, measured honestly on CPU: `tracemalloc` does not see torch's allocator, and a
process's ru_maxrss includes imports and model loading. So each worker reports
  rss_start   RSS when the first training step begins (imports, model, optimizer all set up),
  step_peak   the highest RSS sampled every 5 ms from then until the last step ends,
  proc_peak   ru_maxrss (the kernel's exact high-water mark of the whole process);
the table compares step_peak - rss_start (the working memory of a training step) and proc_peak.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT_TAG = "BENCH-RESULT "
TINY_DIR = Path(os.environ.get("PNS_MINI_CACHE", "~/.cache/pns-mini")).expanduser() / "bench-tiny-llama"


def model_path(name: str, tiny: bool) -> str:
    """A folder both stacks can load: the tiny random Llama (built once, as tests/conftest.py
    builds it), the embedded alias's converted folder, or the name itself (Hub id / folder)."""
    from pns_mini.modeling import EMBEDDED_MODELS, embedded_model_dir
    if tiny:
        if not (TINY_DIR / "config.json").exists():
            from transformers import AutoTokenizer
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import build_tiny_model
            tok = AutoTokenizer.from_pretrained(embedded_model_dir())
            build_tiny_model(tok).save_pretrained(TINY_DIR)
            tok.save_pretrained(TINY_DIR)
        return str(TINY_DIR)
    return str(embedded_model_dir(name)) if name in EMBEDDED_MODELS else name


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryProbe:
    """RSS when `start()` is called, then the highest RSS sampled every `interval` s."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.rss_start, self.peak = interval, None, 0
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self.rss_start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return {"rss_start_mb": (self.rss_start or 0) / 2**20, "step_peak_mb": self.peak / 2**20,
                "proc_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KB on Linux


class PhaseTimer:
    """Wall and CPU seconds (time.process_time: all threads of this process) per training step
    and per phase inside it. On a shared, overloaded machine wall time mostly measures waiting
    for a core; CPU time measures the work, so the tables show both."""

    REST = "backward+opt"  # the part of a step outside the wrapped phases

    def __init__(self):
        self.steps: list[dict] = []
        self._open = None

    def begin_step(self) -> None:
        self.end_step()
        self._open = (time.perf_counter(), time.process_time())
        self.steps.append({"wall": None, "cpu": None, "phases": {}})

    def end_step(self) -> None:
        if self._open is not None:
            wall, cpu = self._open
            self.steps[-1]["wall"] = time.perf_counter() - wall
            self.steps[-1]["cpu"] = time.process_time() - cpu
            self._open = None

    def add(self, phase: str, wall: float, cpu: float) -> None:
        if self._open is not None:
            w, c = self.steps[-1]["phases"].get(phase, (0.0, 0.0))
            self.steps[-1]["phases"][phase] = (w + wall, c + cpu)

    def wrap(self, fn, phase_of):
        """fn, timed; phase_of(args, kwargs) -> the phase name of this call."""
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase_of(args, kwargs), time.perf_counter() - wall, time.process_time() - cpu)
        return timed

    def result(self) -> dict:
        """Per step: wall and CPU seconds, and {phase: seconds} for both, REST included."""
        self.end_step()
        out = {"step_s": [], "step_cpu_s": [], "phases": [], "phases_cpu": []}
        for step in self.steps:
            out["step_s"].append(step["wall"])
            out["step_cpu_s"].append(step["cpu"])
            for i, key in ((0, "phases"), (1, "phases_cpu")):
                ph = {name: v[i] for name, v in step["phases"].items()}
                ph[self.REST] = (step["wall"], step["cpu"])[i] - sum(ph.values())
                out[key].append(ph)
        return out


def is_grad_phase(*_) -> str:
    """The phase of a log-prob call: the forward that carries the gradient, or a no-grad one (the reference)."""
    import torch
    return "policy_fwd" if torch.is_grad_enabled() else "ref_fwd"


class StepMeter:
    """A PhaseTimer and a MemoryProbe, opened together at each step's start; the probe stops at
    the end of the last step. `opens_step` / `ends_run` wrap the functions of our loops that mark
    those points; `trl_callback` does the same around TRL's optimizer steps."""

    def __init__(self, steps: int):
        self.steps, self.timer, self.probe, self.memory = steps, PhaseTimer(), MemoryProbe(), {}

    def begin(self) -> None:
        self.probe.start()
        self.timer.begin_step()

    def end(self) -> None:
        self.timer.end_step()
        if len(self.timer.steps) == self.steps:
            self.memory.update(self.probe.stop())

    def opens_step(self, fn):
        def wrapped(*args, **kwargs):
            self.begin()
            return fn(*args, **kwargs)
        return wrapped

    def ends_run(self, fn):  # our loops save one checkpoint, after the last step (save_steps is huge)
        def wrapped(*args, **kwargs):
            self.end()
            return fn(*args, **kwargs)
        return wrapped

    def trl_callback(self):
        from transformers import TrainerCallback
        meter = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                meter.begin()

            def on_step_end(self, args, state, control, **kw):
                meter.end()
        return StepClock()

    def result(self) -> dict:
        return {**self.timer.result(), **self.memory}


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(script: str, side: str, argv: list[str]) -> dict:
    """Run `script --worker side argv` in a fresh process; its RESULT_TAG line, parsed."""
    cmd = [sys.executable, script, "--worker", side, *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"worker {side} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def alternate(script: str, argv: list[str], repeats: int, log=print) -> dict[str, list[dict]]:
    """Both workers `repeats` times, alternating which goes first."""
    results = {"ours": [], "trl": []}
    for r in range(repeats):
        for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
            t = time.perf_counter()
            res = run_worker(script, side, argv)
            results[side].append(res)
            last = res["phases_cpu"][-1] if res["phases_cpu"] else {}
            log(f"  repeat {r + 1}/{repeats} {side:>4}: steps {', '.join(f'{s:.1f}' for s in res['step_s'])} s wall, "
                f"{', '.join(f'{s:.1f}' for s in res['step_cpu_s'])} s CPU "
                f"(last, CPU: {', '.join(f'{k} {v:.1f}' for k, v in sorted(last.items()))}), "
                f"step peak +{res['step_peak_mb'] - res['rss_start_mb']:.0f} MB, process {time.perf_counter() - t:.0f} s")
    return results


def timed_steps(res: dict) -> list[int]:
    """Indices of the steps that count: all but the first (warm-up) when there are several."""
    n = len(res["step_s"])
    return list(range(1, n)) if n > 1 else [0]


def median_over(results: list[dict], key: str) -> float:
    """Median over repeats and counted steps of a per-step list `key` (or of a per-run scalar)."""
    values = []
    for res in results:
        v = res[key]
        values += [v[i] for i in timed_steps(res)] if isinstance(v, list) else [v]
    return statistics.median(values)


def median_phase(results: list[dict], phase: str, key: str = "phases") -> float:
    return statistics.median([res[key][i].get(phase, 0.0) for res in results for i in timed_steps(res)])


def time_rows(ours: list[dict], trl: list[dict], phases: tuple[str, ...]) -> list[tuple[str, float, float]]:
    """Table rows for the step and its phases, wall and CPU seconds (medians)."""
    rows = []
    for label, step_key, phase_key in (("wall", "step_s", "phases"), ("CPU", "step_cpu_s", "phases_cpu")):
        rows.append((f"step, {label} s", median_over(ours, step_key), median_over(trl, step_key)))
        rows += [(f"  {phase}", median_phase(ours, phase, phase_key), median_phase(trl, phase, phase_key))
                 for phase in (*phases, PhaseTimer.REST)]
    return rows


def memory_rows(ours: list[dict], trl: list[dict]) -> list[tuple[str, float, float]]:
    working = lambda rs: [dict(r, w=r["step_peak_mb"] - r["rss_start_mb"]) for r in rs]  # noqa: E731
    return [("step working memory, MB", median_over(working(ours), "w"), median_over(working(trl), "w")),
            ("RSS at step start, MB", median_over(ours, "rss_start_mb"), median_over(trl, "rss_start_mb")),
            ("process peak RSS, MB", median_over(ours, "proc_peak_mb"), median_over(trl, "proc_peak_mb"))]


def print_table(title: str, rows: list[tuple[str, float, float]], note: str = "") -> None:
    """rows: (label, ours, trl); the last column is ours / TRL."""
    print(f"\n{title}")
    header = f"{'':<34} {'ours':>10} {'TRL':>10} {'ours/TRL':>9}"
    print(header)
    print("-" * len(header))
    for label, ours, trl in rows:
        ratio = f"{ours / trl:>8.2f}x" if trl else f"{'-':>9}"
        print(f"{label:<34} {ours:>10.2f} {trl:>10.2f} {ratio}")
    if note:
        print(note)
