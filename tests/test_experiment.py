"""The paper's experiment (experiments/paper.py, `make experiment`): the smoke form runs every stage
on the tiny random model and writes every table and plot; a rerun skips the finished stages; a
rerun that would change a finished stage or the split is refused before anything is touched; the intervals are checked on
hand-computable values."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import analysis, paper  # noqa: E402
from pns_mini.data import DataError  # noqa: E402


def test_bootstrap_mean_of_constant_and_of_two_values():
    assert analysis.bootstrap_mean([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, lo, hi = analysis.bootstrap_mean([0.0, 1.0] * 20, seed=1)
    assert mean == 0.5 and 0.3 < lo < 0.5 < hi < 0.7
    assert analysis.bootstrap_mean([]) is None
    # paired: the same shift on every item has no spread, whatever the items
    assert analysis.paired_difference([1.0, 0.0, 1.0], [0.0, -1.0, 0.0]) == (1.0, 1.0, 1.0)


def test_smoke_experiment_writes_every_table_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "exp"
    cfg = paper.Config(scale="smoke", model=tiny_model_dir, problems="offline", output_dir=str(out))
    report = paper.main(cfg)
    text = report.read_text()
    for heading in ("## Reward models", "## Stage 1", "## Negatives per source", "## Figure 1, measured",
                    "## Main table", "## Stages, commands and wall time", "## Resizing"):
        assert heading in text
    assert "| rm-a |" in text and "| rm-b |" in text and "| chosen |" in text and "| base |" in text
    assert "python train_generator.py" in text and "--reward-model " + str(out / "rm-a" / "final") in text
    # the perturbed source always has pairs: it is scored, trained on and evaluated
    assert "| perturbed |" in text and "| dpo-perturbed | 3 |" in text
    for png in ("figure1/hist.png", "generator/plots/rewards.png"):
        assert (out / png).stat().st_size > 0 and png in text
    split = json.loads((out / "split.json").read_text())
    ids = [i for part in split["ids"].values() for i in part]
    assert len(ids) == len(set(ids)) == 3 + 3 + 4 + 3  # disjoint sets
    scores = [json.loads(line) for line in (out / "figure1" / "scores.jsonl").read_text().splitlines()]
    assert {r["group"] for r in scores} >= {"chosen", "perturbed"}
    assert all(isinstance(r[s], float) for r in scores for s in analysis.SCORERS)
    # a rerun finds every stage finished: nothing is recomputed
    before = {p: p.stat().st_mtime_ns for p in (out / "figure1" / "scores.jsonl", out / "eval-base" / "summary.json")}
    paper.main(cfg)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # other settings into the same folder: one clear error, nothing touched
    settings = json.loads((out / "experiment.json").read_text())
    with pytest.raises(DataError, match="stage dpo-perturbed finished as .*--max-steps 2.*experiment.json"):
        paper.main(paper.Config(scale="smoke", model=tiny_model_dir, problems="offline", output_dir=str(out),
                                dpo_steps=3))
    with pytest.raises(DataError, match="split.json: the problems were split with"):
        paper.main(paper.Config(scale="smoke", model=tiny_model_dir, problems="offline", output_dir=str(out),
                                n_synth=4))
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads((out / "experiment.json").read_text()) == settings
