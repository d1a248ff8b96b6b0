r"""synthesize.py (stage 2): preference pairs from negative samples, on the tiny random model.

A random tiny model almost never writes a well-formed, verified-wrong solution, so for the
sampling sources (pns, rejection, prompted) a TEST DOUBLE replaces the one sampling function,
`synthesize.sample_candidates`: it returns canned texts per problem (a well-formed wrong one, a
second well-formed wrong one starting "Therefore", a truncated wrong one, one with no box, a correct
one). Everything else is real: problem loading, grading, format checks, the reward model and judge
scorers on the tiny model (except in the ranking test, which uses scorers with known scores),
writing, resume and stats. `perturbed` needs no sampling, and its test double fails if called.

Checked:
- perturb_solution by hand: the box and the line that produces the answer change, nothing else.
- each of the 4 sources on 3 offline problems: one pair per problem, chosen verified correct,
  rejected well-formed with a parsed, verified-wrong answer; stats, report and plot written.
- pns keeps the most plausible candidates first (rewards' total), rejection picks only among
  well-formed wrong candidates, prompted samples with the visible prompt but writes the plain one.
- chosen from the policy; problems without a chosen or without a negative are counted in
  skipped.jsonl with a reason; a reference solution that fails the checker is not written; a
  GSM8K reference solution is converted to \boxed{}.
- a malformed problems JSONL row fails naming file and line (in main and on the command line).
- resume: a torn last line and a problem cut between its pairs are redone, done ids are skipped,
  nothing written before is lost or duplicated; a folder made with another source or prompt
  template is refused.
- --stats-only on two written files, stats computed by hand on rows, similarity by hand.
- the pairs file loads with train_dpo.py's reader and tokenizer, in both pair formats.
"""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import synthesize as S
from pns_mini import grading, report, rewards
from pns_mini.data import DataError, SYSTEM_PROMPT, format_prompt, load_problems, prompt_messages, prompt_text

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = load_problems("offline", limit=3)
REASONING = "Let me work through the quantities in the problem one step at a time and add them up.\n"


def canned(gold: str) -> list[tuple[str, bool]]:
    """Five candidates for one problem: (text, truncated)."""
    g = int(gold)
    return [
        (f"{REASONING}The final answer is \\boxed{{{g + 1}}}.", False),             # well-formed, wrong
        (f"Therefore, {REASONING}so the total is {g + 5}. \\boxed{{{g + 5}}}", False),  # well-formed, wrong
        (f"{REASONING}The final answer is \\boxed{{{g + 2}}}", True),               # truncated
        (f"{REASONING}I think it is about {g + 3}.", False),                        # no box
        (f"{REASONING}The final answer is \\boxed{{{g}}}.", False),                 # correct
    ]


class FakeSampler:
    """Stands in for synthesize.sample_candidates; records what it was asked."""

    def __init__(self, problems=PROBLEMS, texts=canned):
        self.problems, self.texts, self.calls = problems, texts, []

    def __call__(self, model, tokenizer, prompts, cfg, seed):
        self.calls.append({"model": model, "prompts": prompts})
        out = []
        for prompt in prompts:
            problem = next(p for p in self.problems if p["question"].strip() in prompt)
            out.append(self.texts(problem["gold"])[:cfg.num_candidates] if callable(self.texts) else self.texts[problem["id"]])
        return out


def no_sampling(*args, **kwargs):
    raise AssertionError("perturbed negatives must not sample")


@pytest.fixture(scope="module")
def generator_dir(tiny_model_dir, tmp_path_factory):
    """A stage-1-like generator: a fresh LoRA adapter on the tiny model, saved as train_generator does."""
    from pns_mini.modeling import load_model_and_tokenizer, save_atomic
    model, tok = load_model_and_tokenizer(tiny_model_dir, lora_r=4)
    return str(save_atomic(model, tok, tmp_path_factory.mktemp("gen") / "final"))


def run(out, tiny_model_dir, **kw):
    args = dict(model=tiny_model_dir, problems="offline", limit=3, output_dir=str(out), num_candidates=5,
                batch_size=2, max_completion_length=32)
    return S.main(S.Config(**{**args, **kw}))


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_perturb_solution_by_hand():
    text = ("Natalia sold 48/2 = 24 clips in May.\n"
            "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
            "The final answer is \\boxed{72}.")
    out = S.perturb_solution(text, random.Random(0))
    new = out.split("\\boxed{")[1].split("}")[0]
    assert new in {"62", "70", "71", "73", "74", "82", "144"}  # 72 +- 1, 2, 10 or doubled
    assert out == text.replace("= 72", f"= {new}").replace("{72}", "{" + new + "}")
    assert grading.is_confidently_wrong(out, "72") and rewards.format_check(out, False)[0]
    # decimals keep their places, "$38." is found, and a box without a number cannot be perturbed
    assert S.nearby_number("2.50", random.Random(1)) in {"2.40", "2.48", "2.49", "2.51", "2.52", "2.60", "5.00"}
    assert S.perturb_solution("The change is 100 - 62 = $38.\nSo \\boxed{38}.", random.Random(0)).count("38") == 0
    assert S.perturb_solution("so x is \\boxed{y}", random.Random(0)) is None
    assert S.nearby_number("0", random.Random(0)) in {"1", "2", "10"}  # never negative


@pytest.mark.parametrize("source", S.SOURCES)
def test_each_source_makes_verified_pairs(source, tiny_model_dir, generator_dir, tmp_path, monkeypatch):
    sampler = FakeSampler()
    monkeypatch.setattr(S, "sample_candidates", no_sampling if source == "perturbed" else sampler)
    stats = run(tmp_path, tiny_model_dir, negative_source=source, generator=generator_dir if source == "pns" else None)
    pairs = rows(tmp_path / "pairs.jsonl")
    assert sorted(r["id"] for r in pairs) == [p["id"] for p in PROBLEMS]  # one pair per problem
    for r in pairs:
        gold = next(p["gold"] for p in PROBLEMS if p["id"] == r["id"])
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert r["gold"] == gold and r["source"] == source
        assert grading.is_correct(chosen, gold) and r["chosen_answer"] == gold
        assert rewards.format_check(rejected, False)[0]
        assert r["rejected_answer"] is not None and grading.is_confidently_wrong(rejected, gold)
        assert r["rejected_format"] == 1.0 and r["rejected_accuracy"] == 1.0
        assert isinstance(r["rm_raw_chosen"], float) and isinstance(r["rm_raw_rejected"], float)
        assert 0 <= r["judge_rejected"] <= 1 and r["chosen_tokens"] > 0 and r["rejected_tokens"] > 0
        question = next(p["question"] for p in PROBLEMS if p["id"] == r["id"])
        assert r["prompt"] == prompt_messages(question) and r["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert r["prompt"][-1] == {"role": "user", "content": prompt_text(question)}
    assert stats[source]["pairs"] == 3 and stats[source]["problems_tried"] == 3
    assert json.loads((tmp_path / "stats.json").read_text())[source]["pairs"] == 3
    assert (tmp_path / "plots" / "rm_scores.png").stat().st_size > 0 and "| " + source in (tmp_path / "report.md").read_text()
    if source == "pns":  # sampled from the generator (a peft model), with the ordinary prompt
        assert all(hasattr(c["model"], "disable_adapter") for c in sampler.calls)
    if source == "prompted":  # sampled with the visible request for a subtle error, not the plain prompt
        assert all("subtle mistake" in p for c in sampler.calls for p in c["prompts"])
    if source == "rejection":
        wrong = {t for p in PROBLEMS for t, tr in canned(p["gold"])[:2]}
        assert all(r["rejected"][0]["content"] in wrong for r in pairs)
    if source == "perturbed":  # the chosen with its final number moved
        assert all(report.similarity(r["chosen"][0]["content"], r["rejected"][0]["content"]) > 0.8 for r in pairs)


class KnownScorer:
    """Scores with a visible rule: the canned "Therefore" text looks most plausible (raw 3.0, 0.9),
    the other canned texts least (-3.0, 0.2), the reference solutions (chosen) in between (0.0, 0.5)."""

    def raw(self, questions, texts):
        return [3.0 if t.startswith("Therefore") else -3.0 if t.startswith("Let me") else 0.0 for t in texts]

    def __call__(self, questions, texts):
        return [0.9 if t.startswith("Therefore") else 0.2 if t.startswith("Let me") else 0.5 for t in texts]


def test_pns_ranks_by_plausibility(tiny_model_dir, generator_dir, tmp_path, monkeypatch):
    import pns_mini.scorers
    monkeypatch.setattr(S, "sample_candidates", FakeSampler())
    monkeypatch.setattr(pns_mini.scorers, "build_scorers", lambda *a, **k: (KnownScorer(), KnownScorer()))
    run(tmp_path, tiny_model_dir, negative_source="pns", generator=generator_dir, pairs_per_problem=3)
    pairs = rows(tmp_path / "pairs.jsonl")
    assert len(pairs) == 6  # only 2 of the 5 candidates qualify: num_pairs says so
    for first, second in zip(pairs[::2], pairs[1::2]):
        assert (first["rank"], second["rank"], first["num_pairs"], first["qualified"]) == (0, 1, 2, 2)
        assert first["rejected"][0]["content"].startswith("Therefore")
        assert first["rejected_total"] > second["rejected_total"]
        assert first["rm_raw_rejected"] == 3.0 and second["rm_raw_rejected"] == -3.0
        # total = 0.5 format + 1 accuracy + rm sigmoid(3.0) + judge 0.9, with the default weights
        assert first["rejected_total"] == pytest.approx(0.5 + 1 + 1 / (1 + 2.718281828459045 ** -3) + 0.9)
    stats = report.collect_stats([tmp_path / "pairs.jsonl"])[0]["pns"]
    assert stats["rejected_ge_chosen"] == 0.5  # the chosen scores 0.0: only the "Therefore" rows beat it
    assert stats["rm_raw_chosen"] == 0.0 and stats["judge_rejected"] == pytest.approx((0.9 + 0.2) / 2)


def test_policy_chosen_and_skips_are_counted(tiny_model_dir, tmp_path, monkeypatch):
    a, b, c = PROBLEMS
    texts = {a["id"]: canned(a["gold"]),
             b["id"]: canned(b["gold"])[:4],                      # no correct sample: no chosen
             c["id"]: [canned(c["gold"])[i] for i in (2, 3, 4)]}  # correct, but no well-formed wrong one
    monkeypatch.setattr(S, "sample_candidates", FakeSampler(texts=texts))
    stats = run(tmp_path, tiny_model_dir, negative_source="rejection", chosen_source="policy")
    pairs, skipped = rows(tmp_path / "pairs.jsonl"), rows(tmp_path / "skipped.jsonl")
    assert [r["id"] for r in pairs] == [a["id"]]
    assert pairs[0]["chosen"][0]["content"] == canned(a["gold"])[4][0]  # the policy's correct sample
    assert {r["id"]: r["reason"] for r in skipped} == {b["id"]: "no_correct_policy_sample",
                                                       c["id"]: "no_wellformed_wrong_candidate"}
    assert stats["rejection"]["skipped"] == {"no_correct_policy_sample": 1, "no_wellformed_wrong_candidate": 1}
    assert stats["rejection"]["problems_tried"] == 3 and stats["rejection"]["pairs"] == 1


def test_reference_solutions_are_checked_and_converted(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "sample_candidates", no_sampling)
    problems = tmp_path / "problems.jsonl"
    steps = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether."
    problems.write_text("\n".join(json.dumps(r) for r in [
        {"id": "gsm", "question": "Natalia sold clips to 48 friends...", "gold": "72", "solution": steps + "\n#### 72"},
        {"id": "bad", "question": "What is 2+2?", "gold": "4", "solution": REASONING + "The answer is \\boxed{5}."},
        {"id": "none", "question": "What is 3+3?", "gold": "6"},
    ]) + "\n")
    cfg = S.Config(model=tiny_model_dir, problems=str(problems), output_dir=str(tmp_path / "out"),
                   negative_source="perturbed", num_candidates=3)
    S.main(cfg)
    pairs, skipped = rows(tmp_path / "out" / "pairs.jsonl"), rows(tmp_path / "out" / "skipped.jsonl")
    assert [r["id"] for r in pairs] == ["gsm"]
    chosen = pairs[0]["chosen"][0]["content"]
    assert "<<" not in chosen and chosen.rstrip().endswith("\\boxed{72}")
    assert {r["id"]: r["reason"] for r in skipped} == {"bad": "reference_fails_checker", "none": "no_reference_solution"}


def test_malformed_problems_row_names_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "problems.jsonl"
    bad.write_text(json.dumps({"id": 1, "question": "q?", "gold": "1"}) + "\n" + json.dumps({"id": 2, "question": "q?"}) + "\n")
    with pytest.raises(DataError, match=r"problems\.jsonl:2: missing field 'gold'"):
        S.main(S.Config(model=tiny_model_dir, problems=str(bad), output_dir=str(tmp_path / "out"), negative_source="perturbed"))
    proc = subprocess.run([sys.executable, str(ROOT / "synthesize.py"), "--problems", str(bad), "--negative-source",
                           "perturbed", "--output-dir", str(tmp_path / "cli")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and f"{bad}:2: missing field 'gold'" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_skips_done_ids_and_loses_nothing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "sample_candidates", no_sampling)
    run(tmp_path, tiny_model_dir, negative_source="perturbed", pairs_per_problem=2, limit=2)
    before = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert len(before) == 4
    # a kill -9: the second pair of problem 1 was never written and the next row is torn
    (tmp_path / "pairs.jsonl").write_text("\n".join(before[:3]) + "\n" + before[3][:40])
    run(tmp_path, tiny_model_dir, negative_source="perturbed", pairs_per_problem=2, limit=3)
    after = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert after[:2] == before[:2]  # problem 0, written before, kept as it was
    ids = [json.loads(line)["id"] for line in after]
    assert sorted(ids) == sorted([p["id"] for p in PROBLEMS] * 2)  # problem 1 redone whole, problem 2 added
    texts = lambda lines, pid: [(r["chosen"], r["rejected"]) for r in map(json.loads, lines) if r["id"] == pid]  # noqa: E731
    assert texts(after, PROBLEMS[1]["id"]) == texts(before, PROBLEMS[1]["id"])  # seeded per problem: same pairs
    with pytest.raises(DataError, match="negative_source"):
        run(tmp_path, tiny_model_dir, negative_source="rejection")
    assert json.loads((tmp_path / "config.json").read_text())["load_in_4bit"] is False  # resolved: CPU
    with pytest.raises(DataError, match="load_in_4bit: saved False, now True"):  # 4-bit pairs would join bf16 ones
        run(tmp_path, tiny_model_dir, negative_source="perturbed", pairs_per_problem=2, limit=3, load_in_4bit=True)
    with pytest.raises(DataError, match="temperature: saved 1.0, now 0.7"):  # the rest would be drawn otherwise
        run(tmp_path, tiny_model_dir, negative_source="perturbed", pairs_per_problem=2, limit=3, temperature=0.7)
    config = json.loads((tmp_path / "config.json").read_text())  # as if made with another prompt template
    (tmp_path / "config.json").write_text(json.dumps({**config, "prompt_template": "0123456789ab"}))
    with pytest.raises(DataError, match="prompt_template"):
        run(tmp_path, tiny_model_dir, negative_source="perturbed", pairs_per_problem=2, limit=3)


def test_stats_only_on_written_files(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "sample_candidates", FakeSampler())
    run(tmp_path / "a", tiny_model_dir, negative_source="perturbed")
    run(tmp_path / "b", tiny_model_dir, negative_source="rejection")
    stats = S.main(S.Config(stats_only=f"{tmp_path / 'a' / 'pairs.jsonl'},{tmp_path / 'b' / 'pairs.jsonl'}",
                            output_dir=str(tmp_path / "c")))
    assert set(stats) == {"perturbed", "rejection"} and all(s["pairs"] == 3 for s in stats.values())
    assert json.loads((tmp_path / "c" / "stats.json").read_text()) == stats
    assert (tmp_path / "c" / "plots" / "rm_scores.png").exists()
    # by hand: mean RM, share of rejected >= chosen, tokens, word-sequence similarity
    hand = [{"id": "x", "source": "s", "rm_raw_chosen": 1.0, "rm_raw_rejected": 3.0, "judge_chosen": 0.5,
             "judge_rejected": 0.7, "chosen_tokens": 10, "rejected_tokens": 20, "chosen": "a b c d", "rejected": "a b x d",
             "qualified": 2, "candidates": 4},
            {"id": "y", "source": "s", "rm_raw_chosen": 2.0, "rm_raw_rejected": -1.0, "judge_chosen": 0.5,
             "judge_rejected": 0.3, "chosen_tokens": 30, "rejected_tokens": 40, "chosen": "a b", "rejected": "c d",
             "qualified": 1, "candidates": 4}]
    s = report.source_stats(hand, [{"id": "z", "reason": "no_wellformed_wrong_candidate", "verified_wrong": 0, "candidates": 4}])
    assert s["verified_wrong_rate"] == (2 + 1 + 0) / 12 and s["skipped"] == {"no_wellformed_wrong_candidate": 1}
    assert (s["problems_tried"], s["pairs"], s["rm_raw_rejected"], s["rm_raw_chosen"]) == (3, 2, 1.0, 1.5)
    assert (s["rejected_ge_chosen"], s["judge_rejected"], s["tokens_chosen"], s["tokens_rejected"]) == (0.5, 0.5, 20, 30)
    assert s["similarity"] == pytest.approx((2 * 3 / 8 + 0) / 2)  # 3 of 4 words match, then none


@pytest.mark.parametrize("pair_format", ["conversational", "string"])
def test_pairs_load_in_train_dpo(pair_format, tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    import train_dpo
    monkeypatch.setattr(S, "sample_candidates", no_sampling)
    run(tmp_path, tiny_model_dir, negative_source="perturbed", pair_format=pair_format)
    pairs_path = str(tmp_path / "pairs.jsonl")
    read = train_dpo.read_pairs(pairs_path)
    kept, counts = train_dpo.tokenize_pairs(read, tokenizer, train_dpo.Config(pairs=pairs_path))
    assert counts["pairs_kept"] == 3
    first = rows(pairs_path)[0]
    question = PROBLEMS[0]["question"]
    expected_prompt = format_prompt(tokenizer, question)  # both forms give the prompt evaluate.py builds
    assert train_dpo.prompt_string(first["prompt"], tokenizer, True) == expected_prompt
    if pair_format == "string":
        assert first["prompt"] == expected_prompt and isinstance(first["chosen"], str)
    assert tokenizer.decode(kept[0]["chosen"], skip_special_tokens=True) == report.text_of(first["chosen"])


def test_select_negatives_ranks_plausible_sources_and_picks_the_others_at_random():
    """The pair-selection rule by hand: only verified-wrong candidates qualify; pns / prompted take
    the highest composite totals (ties in sample order); rejection / perturbed a seeded random
    subset, whatever the totals say."""
    import random
    checks = [{"text": t, "verified_wrong": w, "total": x}
              for t, w, x in (("a", True, 1.2), ("b", False, 9.0), ("c", True, 1.9), ("d", True, 1.2))]
    for source in ("pns", "prompted"):
        assert S.select_negatives(source, checks, 2, random.Random(0)) == [2, 0]
        assert S.select_negatives(source, checks, 5, random.Random(0)) == [2, 0, 3]
    picks = {tuple(S.select_negatives("rejection", checks, 1, random.Random(seed))) for seed in range(40)}
    assert picks == {(0,), (2,), (3,)}  # uniform over the qualifying three, never the unqualified one
    assert S.select_negatives("perturbed", checks, 2, random.Random(7)) == \
        S.select_negatives("perturbed", checks, 2, random.Random(7))
    assert S.select_negatives("rejection", [{"text": "a", "verified_wrong": False, "total": 1.0}], 1,
                              random.Random(0)) == []
    twice = checks + [{"text": "c", "verified_wrong": True, "total": 1.9}]  # a sample drawn twice: one pair, not two
    assert S.select_negatives("pns", twice, 5, random.Random(0)) == [2, 0, 3]
    assert sorted(S.select_negatives("rejection", twice, 5, random.Random(0))) == [0, 2, 3]
