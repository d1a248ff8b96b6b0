"""evaluate.py: pass@k (Chen et al. 2021) and the percentile bootstrap checked by hand on small
examples; majority voting groups equivalent answers; and runs of `main()` on the tiny random
model: every benchmark plus `offline` (3 problems each, local data) writes all outputs, a rerun
resumes without generating (also after a torn last line), more problems extend the run, other
decoding settings are refused, --regrade recomputes verdicts from the saved completions (also
with another --extraction, which a plain rerun may not mix in), greedy
results do not depend on the batch size, and k > 1 gives pass@k and maj@k (hand-computed from
scripted completions, and a real sampled run)."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluate.py lives at the repo root
import evaluate  # noqa: E402
from evaluate import Config, bootstrap_ci, majority_vote, pass_at_k  # noqa: E402
from pns_mini import data  # noqa: E402
from pns_mini.generation import Completions  # noqa: E402

ROW_FIELDS = {"benchmark", "id", "sample", "prompt", "completion", "extracted", "gold", "verdict", "correct",
              "num_tokens", "truncated"}


def rows_of(folder):
    return [json.loads(line) for line in (Path(folder) / "samples.jsonl").read_text().splitlines()]


def no_generation(monkeypatch):
    """Make any model load or generation fail the test."""
    def fail(*args, **kwargs):
        raise AssertionError("a resumed or regraded run must not load a model or generate")
    monkeypatch.setattr(evaluate.generation, "sample", fail)
    monkeypatch.setattr(evaluate.modeling, "load_model_and_tokenizer", fail)


# --------------------------------------------------------------------------- pure statistics
def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c/n
    assert pass_at_k(3, 2, 2) == 1.0  # only one wrong sample: every pair holds a correct one
    assert pass_at_k(4, 0, 2) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)  # every resample has the same mean
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so with 1000
    # resamples the 2.5% and 97.5% quantiles are the extremes
    assert bootstrap_ci([0.0, 1.0], resamples=1000, seed=0) == (0.0, 1.0)
    lo, hi = bootstrap_ci([0, 0, 1, 1, 1, 0, 1, 1, 0, 1], seed=3)
    assert 0 <= lo < 0.6 < hi <= 1 and bootstrap_ci([0, 0, 1, 1, 1, 0, 1, 1, 0, 1], seed=3) == (lo, hi)
    lo_big, hi_big = bootstrap_ci([0, 0, 1, 1, 1, 0, 1, 1, 0, 1] * 10, seed=3)
    assert hi_big - lo_big < hi - lo  # 10x the problems: a narrower interval


def test_majority_vote_groups_equivalent_answers():
    numeric = lambda a, b: float(a) == float(b)  # noqa: E731
    # "3" once, "2" and "2.0" together twice: the group of 2 wins, represented by its first member
    assert majority_vote(["3", "2", None, "2.0"], numeric) == 1
    assert majority_vote(["3", "2", None], numeric) == 0  # a tie goes to the answer seen first
    assert majority_vote([None, None], numeric) is None
    assert majority_vote(["2", "1/2", "0.5"], evaluate.same_answer) == 1  # the grader groups 1/2 and 0.5


# --------------------------------------------------------------------------- runs on the tiny model
@pytest.fixture(scope="module")
def varied_model_dir(tmp_path_factory, tokenizer):
    """The shared tiny model with its weights (norms aside) x10: the plain one greedily writes
    "\\n" to every prompt, which would make the batch-size and regrade checks vacuous; this
    one writes a different string of tokens for each prompt."""
    from conftest import build_tiny_model
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10)
    path = tmp_path_factory.mktemp("varied-tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data_dir():
    """The benchmark files as data.load_problems finds them ($PNS_MINI_DATA or ../shared/data)."""
    path = next((d for d in data.data_dirs() if (d / "benchmarks").is_dir()), None)
    if path is None:
        pytest.skip(f"no benchmark data in {', '.join(map(str, data.data_dirs()))}")
    return str(path)


def tiny_cfg(varied_model_dir, data_dir, out, **kw):
    kw = {"benchmarks": "all,offline", "limit": 3, "max_completion_length": 8, "batch_size": 4, **kw}
    return Config(model=varied_model_dir, data_dir=data_dir, output_dir=str(out), **kw)


@pytest.fixture(scope="module")
def smoke_run(varied_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    summary = evaluate.main(tiny_cfg(varied_model_dir, data_dir, out))
    return out, summary


def copy_run(smoke_run, tmp_path):
    shutil.copytree(smoke_run[0], tmp_path / "run")
    return tmp_path / "run"


def test_every_benchmark_writes_all_outputs(smoke_run):
    out, summary = smoke_run
    names = list(data.ALL_BENCHMARKS) + ["offline"]
    for f in ("config.json", "samples.jsonl", "metrics.jsonl", "summary.json", "report.md"):
        assert (out / f).is_file(), f
    rows = rows_of(out)
    assert len(rows) == 3 * len(names) and all(ROW_FIELDS <= set(r) for r in rows)
    assert all(r["verdict"] in ("correct", "wrong", "no_answer", "unparseable") for r in rows)
    assert all(r["correct"] == (r["verdict"] == "correct") for r in rows)
    assert all(1 <= r["num_tokens"] <= 8 for r in rows)
    assert all(r["prompt"].rstrip().endswith("assistant") for r in rows)  # the chat template's generation prompt
    assert json.loads((out / "summary.json").read_text()) == summary
    assert list(summary["benchmarks"]) == names
    for stats in summary["benchmarks"].values():
        assert stats["n"] == 3 and 0 <= stats["ci_low"] <= stats["accuracy"] <= stats["ci_high"] <= 1
        assert "pass@2" not in stats and not any(key.startswith("maj@") for key in stats)
    assert summary["average"]["n"] == 3 * len(names)
    assert summary["average"]["accuracy"] == pytest.approx(
        sum(s["accuracy"] for s in summary["benchmarks"].values()) / len(names))
    stamp = summary["stamp"]
    assert stamp["prompt_template_hash"] == data.prompt_template_hash()
    assert stamp["decoding"]["greedy"] and set(stamp["versions"]) == {"torch", "transformers", "peft", "math-verify"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["benchmark"] for m in metrics] == names
    report = (out / "report.md").read_text()
    assert stamp["prompt_template_hash"] in report and "**average** (unweighted)" in report
    assert all(f"| {name} | 3 |" in report for name in names)


def test_rerun_resumes_without_generating(smoke_run, tmp_path, varied_model_dir, data_dir, monkeypatch):
    out = copy_run(smoke_run, tmp_path)
    before = (out / "samples.jsonl").read_text()
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"benchmark": "gsm8k", "id": "gsm')  # a run killed mid-write
    no_generation(monkeypatch)
    summary = evaluate.main(tiny_cfg(varied_model_dir, data_dir, out))
    assert (out / "samples.jsonl").read_text() == before  # torn tail cut, nothing added
    assert summary["benchmarks"] == smoke_run[1]["benchmarks"]


def test_more_problems_extend_the_run(smoke_run, tmp_path, varied_model_dir, data_dir, monkeypatch):
    out = copy_run(smoke_run, tmp_path)
    asked = []
    real_sample = evaluate.generation.sample

    def spy(model, tokenizer, prompts, **kw):
        asked.extend(prompts)
        return real_sample(model, tokenizer, prompts, **kw)
    monkeypatch.setattr(evaluate.generation, "sample", spy)
    summary = evaluate.main(tiny_cfg(varied_model_dir, data_dir, out, benchmarks="offline", limit=5))
    assert len(asked) == 2  # offline/3 and offline/4 only
    assert len(rows_of(out)) == len(rows_of(smoke_run[0])) + 2
    assert summary["benchmarks"]["offline"]["n"] == 5 and summary["benchmarks"]["gsm8k"]["n"] == 3


def test_other_decoding_settings_are_refused(smoke_run, tmp_path, varied_model_dir, data_dir, monkeypatch):
    out = copy_run(smoke_run, tmp_path)
    no_generation(monkeypatch)
    with pytest.raises(evaluate.RunMismatchError, match=r"config\.json.*max_completion_length: saved 8, now 16"):
        evaluate.main(tiny_cfg(varied_model_dir, data_dir, out, max_completion_length=16))
    with pytest.raises(evaluate.RunMismatchError, match="temperature"):
        evaluate.main(tiny_cfg(varied_model_dir, data_dir, out, temperature=0.7))
    rows = rows_of(out)  # a recorded prompt from another template: new rows would mix two prompts
    rows[-1]["prompt"] = rows[-1]["prompt"].replace("step by step", "briefly")
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.undo()
    saved_config = (out / "config.json").read_text()
    with pytest.raises(evaluate.RunMismatchError, match="recorded prompt of offline/2"):
        evaluate.main(tiny_cfg(varied_model_dir, data_dir, out, benchmarks="offline", limit=4))
    assert (out / "config.json").read_text() == saved_config  # a refused rerun writes nothing


def test_regrade_recomputes_verdicts(smoke_run, tmp_path, data_dir, monkeypatch):
    out = copy_run(smoke_run, tmp_path)
    rows = rows_of(out)
    original = [r["verdict"] for r in rows]
    assert rows[0]["benchmark"] == "gsm8k" and not rows[0]["correct"]  # a random model is not right
    rows[0]["completion"] += f" So the answer is \\boxed{{{rows[0]['gold']}}}."  # now it is
    rows[1]["verdict"], rows[1]["correct"] = "correct", True  # a corrupted record
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    no_generation(monkeypatch)
    summary = evaluate.main(Config(output_dir=str(out), data_dir=data_dir, regrade=True))
    regraded = rows_of(out)
    assert regraded[0]["verdict"] == "correct" and regraded[0]["extracted"] is not None
    assert [r["verdict"] for r in regraded[1:]] == original[1:]  # the corrupted verdict is restored
    gsm8k = [r for r in regraded if r["benchmark"] == "gsm8k"]
    assert summary["benchmarks"]["gsm8k"]["accuracy"] == pytest.approx(sum(r["correct"] for r in gsm8k) / 3)
    assert summary["stamp"]["model"] == smoke_run[1]["stamp"]["model"] and summary["stamp"]["regraded"]


def test_regrade_with_another_extraction(smoke_run, tmp_path, varied_model_dir, data_dir, monkeypatch):
    """--extraction is a grading setting: --regrade may change it, a plain rerun may not mix two."""
    assert smoke_run[1]["stamp"]["extraction"] == "eval"  # the default, recorded in summary.json
    out = copy_run(smoke_run, tmp_path)
    rows = rows_of(out)
    gold = rows[0]["gold"]  # an intermediate box, then the final answer in words (eval reads it)
    rows[0]["completion"] += f" First x = \\boxed{{{gold}0}}.\n\nFinal Answer: The final answer is {gold}."
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    no_generation(monkeypatch)
    summary = evaluate.main(Config(output_dir=str(out), data_dir=data_dir, regrade=True, extraction="strict"))
    assert rows_of(out)[0]["verdict"] == "wrong" and summary["stamp"]["extraction"] == "strict"
    assert "`strict` extraction" in (out / "report.md").read_text()
    with pytest.raises(evaluate.RunMismatchError, match="graded with --extraction strict, now eval"):
        evaluate.main(tiny_cfg(varied_model_dir, data_dir, out))  # the default (eval) would mix them
    summary = evaluate.main(Config(output_dir=str(out), data_dir=data_dir, regrade=True))
    assert rows_of(out)[0]["verdict"] == "correct" and summary["stamp"]["extraction"] == "eval"
    evaluate.main(tiny_cfg(varied_model_dir, data_dir, out))  # graded alike again: resumes
    with pytest.raises(ValueError, match="--extraction must be one of strict, eval"):
        Config(extraction="loose")


def test_greedy_does_not_depend_on_batch_size(smoke_run, tmp_path, varied_model_dir, data_dir):
    # The smoke run batched 3 prompts of different lengths (left padding); here one at a time.
    out = tmp_path / "bs1"
    evaluate.main(tiny_cfg(varied_model_dir, data_dir, out, benchmarks="gsm8k,math500,offline", batch_size=1))
    one = {(r["benchmark"], r["id"]): (r["completion"], r["num_tokens"]) for r in rows_of(out)}
    batched = {(r["benchmark"], r["id"]): (r["completion"], r["num_tokens"]) for r in rows_of(smoke_run[0])}
    assert len(one) == 9 and len({text for text, _ in one.values()}) == 9  # nine different completions
    assert one == {key: batched[key] for key in one}


def test_k_samples_give_pass_at_k_and_maj_at_k(tmp_path, varied_model_dir, monkeypatch):  # offline: no files
    problems = data.load_problems("offline", limit=2)
    g0, g1 = int(problems[0]["gold"]), int(problems[1]["gold"])
    scripted = [  # problem 0: 2 of 4 correct, majority correct; problem 1: 1 of 4, majority "g1+1"
        f"\\boxed{{{g0}}}", f"so \\boxed{{{g0}}}", "\\boxed{999}", "I am not sure.",
        f"\\boxed{{{g1}}}", f"\\boxed{{{g1 + 1}}}", f"\\boxed{{{g1 + 1}.0}}", "I give up.",
    ]

    def fake_sample(model, tokenizer, prompts, *, num_samples, **kw):
        assert len(prompts) == 2 and num_samples == 4  # batch_size 8 // k 4 = 2 problems per batch
        n = len(scripted)
        return Completions(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long),
                           torch.zeros(n, 3, dtype=torch.long), torch.ones(n, 3, dtype=torch.long),
                           torch.zeros(n, dtype=torch.bool), list(scripted), [0] * 4 + [1] * 4)
    monkeypatch.setattr(evaluate.generation, "sample", fake_sample)
    cfg = tiny_cfg(varied_model_dir, None, tmp_path / "k4", benchmarks="offline", limit=2, num_samples=4,
                   temperature=1.0, batch_size=8)
    stats = evaluate.main(cfg)["benchmarks"]["offline"]
    assert stats["accuracy"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert stats["pass@2"] == pytest.approx((1 - 1 / 6 + 1 - 3 / 6) / 2)  # 1 - C(n-c,2)/C(4,2) per problem
    assert stats["pass@4"] == 1.0
    assert stats["maj@4"] == 0.5  # without grouping "g1+1" with "g1+1.0", problem 1 would tie and win
    assert stats["no_answer_rate"] == 2 / 8
    assert [r["sample"] for r in rows_of(tmp_path / "k4")] == [0, 1, 2, 3] * 2


def test_k_samples_real_sampling(tmp_path, varied_model_dir):
    cfg = tiny_cfg(varied_model_dir, None, tmp_path / "k2", benchmarks="offline", limit=3, num_samples=2,
                   temperature=1.0, max_completion_length=6)
    stats = evaluate.main(cfg)["benchmarks"]["offline"]
    assert {"pass@2", "maj@2"} <= set(stats) and stats["accuracy"] <= stats["pass@2"]
    rows = rows_of(tmp_path / "k2")
    assert len(rows) == 6
    # Seeded per problem: one problem a batch (batch_size 2 // k 2) draws the same samples as two a
    # batch, and so does a rerun that redoes the second problem of a batch (its rows lost to a kill).
    evaluate.main(dataclasses.replace(cfg, batch_size=2, output_dir=str(tmp_path / "bs2")))
    texts = lambda rs: sorted((r["id"], r["sample"], r["completion"]) for r in rs)  # noqa: E731
    assert texts(rows_of(tmp_path / "bs2")) == texts(rows)
    assert [r["id"] for r in rows[2:4]] == ["offline/1"] * 2
    (tmp_path / "k2" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + rows[4:]))
    evaluate.main(cfg)
    assert texts(rows_of(tmp_path / "k2")) == texts(rows)
    with pytest.raises(ValueError, match="temperature"):
        Config(num_samples=4)  # k greedy samples would be identical
