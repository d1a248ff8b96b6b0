"""The run folder (config.json, metrics.jsonl, samples.jsonl, checkpoints/step-N/, plots/*.png,
report.md): one resume guard, checkpoints with exact resume, the data order and LR schedule, and
plots. Every training script starts the same way:

    resolved = {"load_in_4bit": ..., "dtype": ..., "data": fingerprint(rows)}  # what the flags leave open
    check_run_folder(out, cfg, RESUMABLE, resolved, total_steps)  # before any write; refuses a changed run
    ... load the model, then save_config(cfg, out / "config.json", resolved=resolved) ...
    step, extra = start_run(out, model, optimizer, [metrics_path])   # 0, or the latest checkpoint
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.lr_scheduler_type, step)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import torch

from .data import DataError, iter_jsonl_tolerant, kill_point, repair_torn_tail, write_jsonl
from .modeling import save_pretrained


# ---------------------------------------------------------------------------------------------
# Data order and LR schedule: pure functions of the position, so a resume continues both exactly
# ---------------------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Item indices at positions [start, start + count) of a training script's data stream: epoch
    after epoch, each a permutation of range(n) seeded by (seed, epoch)."""
    out, perms = [], {}
    for pos in range(start, start + count):
        epoch = pos // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][pos % n]))
    return out


def lr_lambda(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warmup over
    `warmup_steps` (the first step at 1/warmup_steps, where transformers' runs at 0), then cosine
    decay reaching 0 at `total_steps` (the last step, total_steps - 1, is just above 0), or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown lr_scheduler_type '{kind}' (accepted: cosine, constant)")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine", step: int = 0):
    """LambdaLR positioned at optimizer step `step` (0: a new run; a resumed run: its checkpoint's
    step, after the optimizer state is loaded). A resume rebuilds the schedule rather than loading
    the old one, so a run extended with a larger --max-steps follows the schedule of its new
    length, not the old one's final LR of 0."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the peak LR (a loaded optimizer state has it)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, warmup_steps, total_steps, kind),
                                             last_epoch=step - 1)  # its first (internal) step sets step's LR


# ---------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler,
                    extra: dict | None = None, keep_last: int = 2) -> Path:
    """Write checkpoints/step-{step}/ via a temp folder renamed into place, so a crash never leaves
    a checkpoint that resumes wrongly: the adapter (save_pretrained), and trainer.pt with optimizer,
    RNG states, step and `extra` (e.g. the data position); the scheduler state is kept for
    inspection only (see make_scheduler). Checkpoints beyond the last `keep_last` are removed."""
    ckpt_root = Path(output_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp-", dir=ckpt_root))
    save_pretrained(model, tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(), "extra": extra or {}}, tmp / "trainer.pt")
    kill_point(f"checkpoint:{step}")  # test hook: a kill -9 that leaves the temp folder behind
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last else []:
        shutil.rmtree(ckpt_root / f"step-{old}", ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[int]:
    root = Path(output_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*")
                  if p.name.split("-")[1].isdigit() and (p / "trainer.pt").exists())


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Restore adapter weights, optimizer and RNG from checkpoints/step-N/ into a model that already
    carries a LoRA adapter of the same shape. Returns {"step", "extra"}."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{path}: no adapter_model.safetensors in checkpoint")
    set_peft_model_state_dict(model, load_file(weights, device=str(next(model.parameters()).device)))
    state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return {"step": state["step"], "extra": state["extra"]}


# ---------------------------------------------------------------------------------------------
# The run folder: one guard before anything is written, then a start at step 0 or a resume
# ---------------------------------------------------------------------------------------------
ALWAYS_RESUMABLE = ("resume", "output_dir")


def fingerprint(rows) -> str:
    """A short hash of a script's input rows (problems, pairs): an input file edited in place
    between a run and its --resume changes it."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_config(path: Path) -> dict:
    """A saved config.json as a dict; one line (DataError) when it is not a JSON object."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON config ({e}); cannot check that this run continues it") from None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a JSON object; cannot check that this run continues it")
    return saved


def check_run_folder(out: str | Path, cfg, resumable: tuple[str, ...], resolved: dict | None = None,
                     total_steps: int | None = None) -> None:
    """The resume guard of every training script, called before any file is written (config.json
    included). A folder with a checkpoint or a final/ holds a run: without --resume it is refused,
    so finished work is never overwritten (with --resume, final/ without a checkpoint is too).
    With --resume the saved config.json must equal `cfg` except for the
    fields in `resumable` (e.g. max_steps, which extends a run): any other change would make a
    different run under the old one's name. `resolved` is what the run depends on beyond its flags
    (4-bit and dtype as chosen by the device, the input data's `fingerprint`), saved as config.json's
    "resolved"; each must be as saved (a folder saved before it was recorded is not checked). A
    latest checkpoint past `total_steps` is refused: the run would end at once with the longer
    run's weights. A folder without a checkpoint starts again at step 0, with or without --resume."""
    out, steps = Path(out), list_checkpoints(out)
    if not cfg.resume:
        if steps or (out / "final").exists():
            raise DataError(f"{out}: already holds a run; pass --resume to continue it or choose a new --output-dir")
        return
    if not steps and (out / "final").exists():
        raise DataError(f"{out}: holds a finished run (final/) but no checkpoint to resume it from; "
                        f"choose a new --output-dir")
    if total_steps is not None and steps and steps[-1] > total_steps:
        raise DataError(f"{out}: its latest checkpoint is step {steps[-1]}, past the {total_steps} steps asked "
                        f"for now; give at least {steps[-1]} steps, or a new --output-dir for a shorter run")
    path = out / "config.json"
    if not path.exists():
        return
    saved = read_config(path)
    now = json.loads(json.dumps(asdict(cfg), default=str))
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(cfg) if f.default is not MISSING}, default=str))
    saved = {**defaults, **saved}  # a field newer than the saved config counts as its default
    allowed = ALWAYS_RESUMABLE + tuple(resumable)
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}" for k, v in now.items()
               if k not in allowed and saved[k] != v]
    before = saved.get("resolved") if isinstance(saved.get("resolved"), dict) else {}
    now_resolved = json.loads(json.dumps(resolved or {}, default=str))
    changed = changed or [f"{k} {before[k]!r} -> {v!r}" + (" (the input file changed)" if k == "data" else "")
                          for k, v in now_resolved.items() if k in before and before[k] != v]  # a changed flag says why
    if changed:
        raise DataError(f"{path}: --resume with different settings ({'; '.join(changed)}); only "
                        f"{', '.join('--' + k.replace('_', '-') for k in resumable)} may change. "
                        f"Use the saved settings or a new --output-dir")


def check_same_settings(path: str | Path, now: dict, what: str, error: type[Exception] = DataError) -> None:
    """The resume guard of the scripts that resume by being rerun (synthesize.py, evaluate.py):
    the settings in `now` must equal those saved in config.json `path` (if there is one), or the
    folder would mix outputs of two setups. Raises `error` naming each difference."""
    path = Path(path)
    if not path.exists():
        return
    saved = read_config(path)
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diffs:
        raise error(f"{path}: this folder holds {what} made with other settings ({'; '.join(diffs)}); "
                    f"use another --output-dir, or the saved settings")


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Remove what a kill -9 during an atomic write leaves behind: temp folders and files
    (.final.tmp-*, .adapter.old-*, .metrics.jsonl.tmp-*, checkpoints/.step-N.tmp-*,
    ref_logps.pt.tmp). Only call it where no other process writes into the folder. Returns what
    was removed."""
    out = Path(out)
    removed = []
    for pattern in (".*.tmp-*", ".*.old-*", "*.tmp", "checkpoints/.step-*.tmp-*"):
        for path in out.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


def start_run(out: str | Path, model, optimizer, logs: list[Path]) -> tuple[int, dict]:
    """(step, extra) where the run starts, after check_run_folder: 0 and {} in a new folder (or one
    whose run was killed before its first checkpoint), else the latest checkpoint's step and saved
    `extra` (the data position), its weights, optimizer and RNG state loaded. Stale temp folders
    are removed and the append-only `logs` are cut back to that step (a torn last line, and the
    rows written after the checkpoint, which the run writes again), so they read as one
    uninterrupted run."""
    remove_stale_temps(out)
    step, extra, ckpt = 0, {}, None
    steps = list_checkpoints(out)
    if steps:
        ckpt = Path(out) / "checkpoints" / f"step-{steps[-1]}"
        state = load_checkpoint(ckpt, model, optimizer)
        step, extra = state["step"], state["extra"]
    dropped = 0
    for path in logs:
        repair_torn_tail(path)
        dropped += truncate_metrics(path, step)
    if step:
        print(f"resuming {out} from {ckpt} ({dropped} log row(s) written after it dropped, to be written again)")
    elif dropped:
        print(f"{out}: no checkpoint yet, so the run starts again at step 0 ({dropped} log row(s) of the "
              f"interrupted run dropped)")
    return step, extra


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict]:
    return list(iter_jsonl_tolerant(path))


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Keep only rows with step <= last_step (see start_run). Returns the number of rows dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = read_metrics(path)
    kept = [r for r in rows if r.get("step", 0) <= last_step]
    write_jsonl(path, kept)
    return len(rows) - len(kept)


def plot_metrics(metrics_path: str | Path, out_dir: str | Path, panels: dict[str, list[str]],
                 x: str = "step") -> list[Path]:
    """One PNG per panel: {"rewards": ["reward/format", "reward/accuracy"], ...} drawn from
    metrics.jsonl, so plots can be redrawn after the fact. Keys missing from the rows are skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in panels.items():
        series = {key: [(r[x], r[key]) for r in rows if r.get(key) is not None and x in r] for key in keys}
        if not any(series.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=2, label=key)
        ax.set_xlabel(x)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        target = out_dir / f"{name.replace('/', '_')}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written
