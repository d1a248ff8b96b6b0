"""The pipeline report reads every number from the files the stages wrote: first/last reward
components of stage 1, per-source negative stats, DPO first/last rows, accuracy before/after."""
import json

from pns_mini.report import write_report


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_reads_each_stage(tmp_path):
    _jsonl(tmp_path / "generator/metrics.jsonl",
           [{"step": s, "reward/total": -1.0 + s, "reward/format": 0.1 * s, "kl": 0.0} for s in (1, 2, 3, 4)])
    (tmp_path / "pairs-pns").mkdir()
    (tmp_path / "pairs-pns/stats.json").write_text(json.dumps({"pns": {
        "pairs": 7, "problems_tried": 12, "rm_raw_rejected": 3.34, "rm_raw_chosen": 3.21,
        "rejected_ge_chosen": 0.57, "judge_rejected": 0.6, "judge_chosen": 0.7, "similarity": 0.4}}))
    _jsonl(tmp_path / "pairs-pns/metrics.jsonl", [{"batch": 0, "problems": 12, "pairs": 7, "seconds": 60.0}])
    _jsonl(tmp_path / "pairs-pns/pairs.jsonl", [{
        "id": "offline/3", "source": "pns", "gold": "38", "rejected_answer": "36", "rejected_total": 2.5,
        "rm_raw_chosen": 3.21, "rm_raw_rejected": 3.34, "prompt": [{"role": "user", "content": "How many? Please reason"}],
        "chosen": [{"role": "assistant", "content": "right"}], "rejected": [{"role": "assistant", "content": "6 x 6 = 36"}]}])
    _jsonl(tmp_path / "dpo/metrics.jsonl", [{"step": 1, "loss": 0.6931, "rewards/margins": 0.0},
                                           {"step": 2, "loss": 0.5, "rewards/margins": 0.25,
                                            "warning/chosen_logp_drop": True}])
    for name, acc in (("eval-base", 0.25), ("eval-dpo", 0.5)):
        s = {"n": 8, "accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1, "no_answer_rate": 0.0}
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"benchmarks": {"offline": s}, "average": s}))
    text = write_report(tmp_path).read_text()
    assert "| reward/total | 0.500 | 2.500 |" in text  # means of steps 1-2 and 3-4
    assert "| 2 synthesize pns | 7 pairs / 12 problems | 1.0 |" in text  # stage times from the files
    assert "Example (pns, problem `offline/3`, gold 38): the rejected side answers 36" in text and "> 6 x 6 = 36" in text
    assert "| pns | 7/12 | - | 3.340 | 3.210 | 0.570 |" in text  # no wrong/cand in this stats.json
    assert "| rewards/margins | 0.000 | 0.250 |" in text and "Warning" in text
    assert "| offline | 8 | 25.0 (15.0-35.0) | 50.0 (40.0-60.0) |" in text


def test_report_says_what_is_missing(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "No metrics" in text and "Missing summary.json" in text
