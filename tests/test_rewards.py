r"""The negative generator's reward (pns_mini/rewards.py), checked as a spec:

* one test per format rule, on real-looking solutions, plus the closing lines that must still pass;
* accuracy inversion: only a verified-wrong answer wins; no answer or an unparseable one never does;
* what a negative is (negative_check, shared with synthesis): tables of hedges, self-contradictions
  and wrong kinds that are refused, each with its format_fail reason, and of genuine wrong
  solutions (a slip, a wrong operation, a misread question, an invented step...) that still count;
* the reward table: malformed or no answer < correct < implausible wrong < plausible wrong, with
  hand-computed totals, and the same ordering over a grid of scores and weights;
* components are reported even where the gating leaves them out of the total; bad inputs are loud;
* the TRL-style reward functions on plain strings and on chat messages, and the gated composite.
No model is loaded here; the model scorers are stood in for by plain functions, and importing
the module does not import torch.
"""
import itertools
import math
import subprocess
import sys

import pytest

from pns_mini import rewards
from pns_mini.data import prompt_text
from pns_mini.rewards import (COMPONENTS, DEFAULT_REWARD_WEIGHTS, accuracy_inversion_reward, composite_reward,
                              format_check, repeat_ratio, score_completions)
from pns_mini.trl_rewards import trl_reward_functions

QUESTION = ("Tom has 12 apples. He buys 2 bags of 5 apples each and then gives away 4. "
            "How many apples does Tom have now?")
GOLD = "18"
REASONING = ("The bags hold 2 * 5 = 10 apples.\n"
             "After buying, Tom has 12 + 10 = 22 apples.\n"
             "After giving away 4, he has 22 - 4 = 18 apples.\n")
CORRECT = REASONING + r"The final answer is \boxed{18}."
# A plausible negative: one slip in the last step, carried through to the answer.
WRONG = REASONING.replace("22 - 4 = 18", "22 - 4 = 16") + r"The final answer is \boxed{16}."


# ---------------------------------------------------------------------------------------------
# Format rules, one by one
# ---------------------------------------------------------------------------------------------
def test_well_formed_solutions_pass():
    assert format_check(CORRECT, False) == (True, "")
    assert format_check(WRONG, False) == (True, "")
    assert format_check(CORRECT, False)[0] is True


@pytest.mark.parametrize("ending", [
    r"The final answer is $\boxed{18}$.",
    "So Tom has\n\\[\\boxed{18}\\]",
    r"Therefore the answer is \boxed{18} apples.",
    r"The final answer is \boxed{18}. I hope it is correct.",  # Minerva-style sign-off
    r"**Answer:** \boxed{18}**",
])
def test_short_closing_text_after_the_box_passes(ending):
    assert format_check(REASONING + ending, False) == (True, "")


@pytest.mark.parametrize("text, truncated, reason", [
    (CORRECT, True, "truncated"),  # no EOS: the answer may be cut off
    (r"It is \boxed{18}.", False, "too_short"),
    ("I add 5 and 5 to get 10. " * 8 + r"The final answer is \boxed{10}.", False, "repetition"),
    (REASONING + "The final answer is 18.", False, "no_boxed"),  # an answer phrase, but no box
    (REASONING + "#### 18", False, "no_boxed"),
    (REASONING + r"The final answer is \boxed{18", False, "unparseable"),  # box never closed
    (REASONING + r"The final answer is \boxed{18}, or maybe \boxed{}", False, "unparseable"),  # empty last box
    (REASONING + r"The final answer is \boxed{18}, \fbox{20}", False, "unparseable"),  # grading reads the \fbox
    (r"The final answer is \boxed{18}. I got it by thinking about the problem for a long while.", False,
     "no_reasoning_before_answer"),
    (CORRECT + "\n\nQuestion: Maria has 7 pens and buys 3 more. How many pens does she have?", False,
     "text_after_answer"),
    (CORRECT + "\nWait, 22 - 4 is 18, so I am sure the answer stays as it is.", False, "text_after_answer"),
])
def test_each_format_rule(text, truncated, reason):
    assert format_check(text, truncated) == (False, reason)
    assert format_check(text, truncated)[0] is False
    assert reason in rewards.FORMAT_REASONS


def test_length_bounds_are_parameters():
    assert format_check(CORRECT, False, max_chars=100) == (False, "too_long")
    assert format_check(CORRECT, False, min_chars=len(CORRECT) + 1) == (False, "too_short")
    assert format_check(CORRECT, False, min_reasoning_words=100) == (False, "no_reasoning_before_answer")


def test_repeat_ratio_by_hand():
    assert repeat_ratio("a b c") == 0.0  # no 4-gram at all
    assert repeat_ratio("a b c d e") == 0.0  # 2 distinct 4-grams
    # "x y z w" looped 3 times: 12 words, 9 4-grams, 4 distinct -> 1 - 4/9
    assert repeat_ratio("x y z w " * 3) == pytest.approx(1 - 4 / 9)
    assert repeat_ratio(CORRECT) < 0.1  # a real solution repeats little


# ---------------------------------------------------------------------------------------------
# Accuracy inversion
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (WRONG, 1.0),  # verified wrong: the only win
    (CORRECT, 0.0),
    (REASONING + "So Tom has some apples left.", 0.0),  # no answer: a format failure, not a win
    (REASONING + r"The final answer is \boxed{import os}.", 0.0),  # refused by the grader: unparseable
])
def test_accuracy_inversion(text, expected):
    assert accuracy_inversion_reward(text, GOLD) == expected


# ---------------------------------------------------------------------------------------------
# What a negative is (rewards.negative_check, shared by the reward and synthesis)
# ---------------------------------------------------------------------------------------------
BOUGHT = ("Tom starts with 12 apples. Each bag holds 5 apples, so the 2 bags hold 2 * 5 = 10 apples.\n"
          "After buying them he has 12 + 10 = 22 apples.\n")

# Wrong answers that must NOT count as negatives against gold 18, and the rule each one breaks.
NOT_NEGATIVES = [
    pytest.param(BOUGHT + "He gives away 4, so 22 - 4 = 18 apples, unless I miscounted a bag.\n"
                 r"The final answer is \boxed{18} or \boxed{19}.", "several_answers", id="gold-or-another-box"),
    pytest.param(BOUGHT + "He gives away 4 or 3 of them, the question is not clear.\n"
                 r"The final answer is \boxed{18 \text{ or } 19}.", "several_answers", id="or-inside-one-box"),
    pytest.param(BOUGHT + "Depending on whether he gives 4 or 3 away, he keeps a different number.\n"
                 r"The final answer is \boxed{18, 19}.", "several_answers", id="list-for-a-single-answer"),
    pytest.param(BOUGHT + "He gives 3 apples to one friend and keeps the rest, which leaves him 19.\n"
                 r"The final answer is \boxed{19} \boxed{20}.", "several_answers", id="two-boxes-side-by-side"),
    pytest.param(BOUGHT + "He gives some away, leaving him with 19 or 20 apples.\n"
                 r"The final answer is $\boxed{19}$, or perhaps $\boxed{20}$.", "several_answers",
                 id="wrong-alternatives"),
    pytest.param(BOUGHT + "He gives away 4, so 22 - 4 = 18.\n" r"The final answer is \boxed{18}." "\n\n"
                 "Wait, let me recount. The bags hold 6 apples each, so he has 12 + 12 = 24 and then "
                 r"24 - 4 = 20. The final answer is \boxed{20}.", "gold_stated", id="gold-boxed-then-recount"),
    pytest.param(BOUGHT + "He gives away 3 apples, so 22 - 3 = 19.\n"
                 r"The final answer is \boxed{19}, but the true answer is 18.", "gold_stated",
                 id="true-answer-after-the-box"),
    pytest.param(BOUGHT + "So the answer is 18.\nOn second thought the bags may hold 6 each: "
                 r"12 + 12 - 4 = 20. The final answer is \boxed{20}.", "gold_stated", id="gold-stated-in-words"),
    pytest.param(BOUGHT + "Let x be the number of apples left once he has given some of them away.\n"
                 r"The final answer is \boxed{x}.", "not_a_number", id="symbol-against-number"),
    pytest.param(BOUGHT + "Let a be the bags and b the apples in each bag; he has a times b.\n"
                 r"The final answer is \boxed{ab}.", "not_a_number", id="letters-against-number"),
    pytest.param(BOUGHT + "He gives a few of them away, so he has many apples left over.\n"
                 r"The final answer is \boxed{many}.", "unparseable", id="word-against-number"),
    pytest.param(BOUGHT + "After he gives away 4 apples, he counts what is left in his basket.\n"
                 r"The final answer is \boxed{}.", "unparseable", id="empty-box"),
    pytest.param(BOUGHT + "He gives away 3 apples, so 22 - 3 = 19.\n"
                 r"The final answer is \boxed{19}, or maybe 20.", "answer_after_box", id="another-answer-after"),
    pytest.param(BOUGHT + "He gives away 3 apples, so 22 - 3 = 19.\n"
                 r"The final answer is \boxed{19}. Actually it is 17.", "answer_after_box", id="taken-back-after"),
    pytest.param(BOUGHT + "After giving away 4, he has 22 - 4 = 18 apples.\n"
                 r"The final answer is \boxed{24}.", "gold_before_box", id="derives-gold-boxes-other"),
    pytest.param(BOUGHT + "He gives away 4 apples, so he is left with 22 - 4 = 18 apples, so "
                 r"the answer is \boxed{24}.", "gold_before_box", id="derives-gold-same-sentence"),
]

# Genuine negatives: a real wrong answer reached by the solution's own (faulty) reasoning.
NEGATIVES = [
    pytest.param(BOUGHT.replace("12 + 10 = 22", "12 + 10 = 23") + "After giving away 4, he has 23 - 4 = 19 apples.\n"
                 r"The final answer is \boxed{19}.", id="arithmetic-slip-carried-to-the-end"),
    pytest.param(BOUGHT + "Giving away 4 apples means he now has 22 + 4 = 26 apples.\n"
                 r"The final answer is \boxed{26}.", id="wrong-operation"),
    pytest.param("The question asks how many apples Tom gives away. He buys 2 bags of 5 apples, 10 apples "
                 "in all, and then he gives away 4 of his apples.\n" r"The final answer is \boxed{4}.",
                 id="misread-question"),
    pytest.param(BOUGHT + "After giving away 4, he has 22 - 4 = 18 apples. He then eats 2 of them at lunch, "
                 "leaving 18 - 2 = 16 apples.\n" r"The final answer is \boxed{16}.", id="invented-step-gold-mid-way"),
    pytest.param(BOUGHT + "He gives away 4 apples to each of his 2 friends, so 22 - 8 = 14 apples are left.\n"
                 r"The final answer is $\boxed{14}$.", id="dollar-wrapped-box"),
    pytest.param(BOUGHT + "He shares the 22 - 4 = 18 apples with his sister, but he keeps one more than half: "
                 r"$\frac{18}{2} + \frac{1}{2} = \frac{19}{2}$." "\n" r"The final answer is $\boxed{\frac{19}{2}}$.",
                 id="fraction-against-integer"),
    pytest.param(BOUGHT + r"He gives away 4, which gives \boxed{17}." "\n\n"
                 "Let me check that again: 22 - 4 is 18, and he also drops 1 on the way home, so 22 - 5 = 17 "
                 r"apples. The final answer is \boxed{17}.", id="checked-wrong-answer-kept"),
    pytest.param(BOUGHT + "Giving away 4 apples leaves him with 22 - 4 = 16 apples.\n"
                 r"The final answer is \boxed{16} apples. I hope it is correct.", id="closing-words-after-the-box"),
]


@pytest.mark.parametrize("text, reason", NOT_NEGATIVES)
def test_hedges_and_contradictions_are_not_negatives(text, reason):
    ok, why, graded = rewards.negative_check(text, False, GOLD)
    assert (ok, why) == (False, reason)
    assert reason in rewards.FORMAT_REASONS  # logged as format_fail/<reason> by train_generator
    row, = score_completions([text], [GOLD], [False], [0.9], [0.9])
    # a format failure: the malformed penalty, no accuracy win, whatever the scorers think of it
    assert (row["format"], row["accuracy"], row["total"], row["format_reason"]) == (0.0, 0.0, -1.0, reason)
    assert accuracy_inversion_reward(text, GOLD) == 0.0


@pytest.mark.parametrize("text", NEGATIVES)
def test_genuine_wrong_solutions_are_negatives(text):
    ok, why, graded = rewards.negative_check(text, False, GOLD)
    assert (ok, why, graded.verdict) == (True, "", "wrong")
    assert rewards.negative_reason(text, GOLD) == ""
    row, = score_completions([text], [GOLD], [False], [0.5], [0.5])
    assert (row["format"], row["accuracy"], row["total"]) == (1.0, 1.0, 0.5 + 1.0 + 0.5 + 0.5)


def test_negative_rules_leave_correct_answers_and_other_format_failures_alone():
    # A correct answer is judged by format_check alone: its reward (0.5) is what it was.
    hedged_correct = REASONING + r"The final answer is \boxed{19} or \boxed{18}."
    assert rewards.negative_check(CORRECT, False, GOLD)[:2] == (True, "")
    assert rewards.negative_check(hedged_correct, False, GOLD)[:2] == (True, "")
    assert score_completions([hedged_correct], [GOLD], [False], None, None)[0]["total"] == 0.5
    # A truncated hedge fails as truncated first; it earns no accuracy either way.
    hedge = NOT_NEGATIVES[0].values[0]
    row, = score_completions([hedge], [GOLD], [True], None, None)
    assert (row["format_reason"], row["accuracy"], row["total"]) == ("truncated", 0.0, -1.0)
    # Boxes listed with commas are one answer when the gold has several parts.
    roots = REASONING + r"Factoring gives (x - 1)(x - 3) = 0, so the roots are $\boxed{1}$, $\boxed{3}$."
    assert rewards.negative_check(roots, False, "1, 2")[:2] == (True, "")
    assert rewards.negative_check(roots, False, "2")[:2] == (False, "several_answers")
    assert set(rewards.NEGATIVE_REASONS) <= set(rewards.FORMAT_REASONS)


# ---------------------------------------------------------------------------------------------
# The reward table
# ---------------------------------------------------------------------------------------------
def test_reward_table_orders_malformed_correct_implausible_plausible():
    texts = [
        REASONING + "So Tom has some apples left.",  # no answer
        WRONG,  # wrong, but cut off at the length limit
        REASONING + r"The final answer is \boxed{import os}.",  # a box the grader refuses
        CORRECT,
        WRONG,  # implausible according to the scorers below
        WRONG,  # plausible according to them
    ]
    truncated = [False, True, False, False, False, False]
    rm = [0.9, 0.9, 0.9, 0.95, 0.1, 0.9]  # the scorers like the malformed and correct ones too
    judge = [0.8, 0.8, 0.8, 0.9, 0.2, 0.8]
    rows = score_completions(texts, [GOLD] * 6, truncated, rm, judge)
    totals = [r["total"] for r in rows]
    # Hand-computed with the default weights (format 0.5, accuracy 1, reward_model 1, judge 1):
    assert totals == pytest.approx([-1.0, -1.0, -1.0, 0.5, 0.5 + 1 + 0.1 + 0.2, 0.5 + 1 + 0.9 + 0.8])
    assert max(totals[:3]) < totals[3] < totals[4] < totals[5]
    assert [r["verdict"] for r in rows] == ["no_answer", "wrong", "unparseable", "correct", "wrong", "wrong"]
    assert [r["format_reason"] for r in rows] == ["no_boxed", "truncated", "unparseable", "", "", ""]
    assert [r["answer"] for r in rows] == [None, "16", "import os", "18", "16", "16"]


def test_components_are_reported_even_when_gated():
    rows = score_completions([WRONG, CORRECT], [GOLD, GOLD], [True, False], [0.7, 0.6], [0.4, 0.3])
    malformed, correct = rows
    # the truncated wrong answer: every component is logged, the total is the penalty
    assert (malformed["format"], malformed["accuracy"], malformed["reward_model"], malformed["judge"]) == (0.0, 1.0, 0.7, 0.4)
    assert malformed["total"] == -1.0
    # the correct answer: its plausibility is logged but does not count
    assert (correct["format"], correct["accuracy"], correct["reward_model"], correct["judge"]) == (1.0, 0.0, 0.6, 0.3)
    assert correct["total"] == 0.5
    assert set(rows[0]) == {"total", *COMPONENTS, "answer", "verdict", "format_reason"}


def test_scorers_off_give_zero_components():
    row, = score_completions([WRONG], [GOLD], [False], None, None)
    assert (row["reward_model"], row["judge"], row["total"]) == (0.0, 0.0, 1.5)


def test_accuracy_component_equals_accuracy_inversion_reward():
    texts = [CORRECT, WRONG, REASONING, REASONING + r"\boxed{import os}.", WRONG + "\nMore text after the answer here."]
    rows = score_completions(texts, [GOLD] * len(texts), [False] * len(texts), None, None)
    assert [r["accuracy"] for r in rows] == [accuracy_inversion_reward(t, GOLD) for t in texts]


def test_ordering_holds_over_a_grid_of_scores_and_weights():
    grid = [0.0, 0.3, 1.0]
    for wf, wa, wrm, wj in itertools.product([0.1, 0.5, 1.0], [0.5, 1.0, 2.0], [0.0, 1.0, 3.0], [0.0, 1.0, 3.0]):
        w = {"format": wf, "accuracy": wa, "reward_model": wrm, "judge": wj}

        def total(fmt, wrong, rm, j):
            comps = {"format": float(fmt), "accuracy": float(wrong), "reward_model": rm, "judge": j}
            return composite_reward(comps, w, format_ok=fmt, wrong=wrong)

        malformed = max(total(False, wrong, rm, j) for wrong in (False, True) for rm in grid for j in grid)
        correct = [total(True, False, rm, j) for rm in grid for j in grid]
        assert malformed < min(correct) and max(correct) == min(correct) == wf  # plausibility ignored
        wrong = {(rm, j): total(True, True, rm, j) for rm in grid for j in grid}
        assert max(correct) < min(wrong.values())
        for (rm, j), value in wrong.items():  # more plausible (either score up) never scores lower
            assert all(value <= wrong[(rm2, j2)] for rm2 in grid for j2 in grid if rm2 >= rm and j2 >= j)


def test_plausibility_for_every_answer_is_an_explicit_ablation():
    rows = score_completions([CORRECT, WRONG], [GOLD, GOLD], [False, False], [1.0, 0.0], [1.0, 0.0],
                             plausibility_only_when_wrong=False)
    assert rows[0]["total"] == 2.5 and rows[1]["total"] == 1.5  # the correct one now wins: why it is off


def test_weights_are_validated_and_partial_overrides_keep_the_defaults():
    assert rewards.resolve_weights({"judge": 0.0}) == {**DEFAULT_REWARD_WEIGHTS, "judge": 0.0}
    assert rewards.weights_from_list([1, 2, 3, 4]) == {"format": 1.0, "accuracy": 2.0, "reward_model": 3.0, "judge": 4.0}
    with pytest.raises(ValueError, match="unknown reward component 'rm'"):
        rewards.resolve_weights({"rm": 1.0})
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        rewards.resolve_weights({"judge": -1.0})
    with pytest.raises(ValueError, match="needs 4 numbers"):
        rewards.weights_from_list([1.0, 1.0])
    with pytest.raises(ValueError, match="malformed_penalty=0.5 must be below the format weight"):
        score_completions([CORRECT], [GOLD], [False], None, None, malformed_penalty=0.5)


def test_raw_or_mismatched_scores_are_refused():
    with pytest.raises(ValueError, match=r"rm_scores\[0\] = 3.34 is not in \[0, 1\]"):
        score_completions([WRONG], [GOLD], [False], [3.34], None)
    with pytest.raises(ValueError, match="judge_scores"):
        score_completions([WRONG], [GOLD], [False], None, [math.nan])
    with pytest.raises(ValueError, match="2 scores for 1 completions"):
        score_completions([WRONG], [GOLD], [False], [0.1, 0.2], None)
    with pytest.raises(ValueError, match="1 completions but 2 golds"):
        score_completions([WRONG], [GOLD, GOLD], [False], None, None)


# ---------------------------------------------------------------------------------------------
# TRL-style reward functions
# ---------------------------------------------------------------------------------------------
class FakeScorer:
    """Stands in for a scorers.* object: a fixed score per completion, recording its inputs."""

    def __init__(self, by_text):
        self.by_text, self.calls = by_text, []

    def __call__(self, questions, completions):
        self.calls.append((list(questions), list(completions)))
        return [self.by_text[c] for c in completions]


def test_trl_component_functions_on_strings_and_messages():
    rm = FakeScorer({CORRECT: 0.9, WRONG: 0.2})
    judge = FakeScorer({CORRECT: 0.8, WRONG: 0.3})
    funcs, weights = trl_reward_functions(rm, judge)
    assert [f.__name__ for f in funcs] == list(COMPONENTS)
    assert weights == [DEFAULT_REWARD_WEIGHTS[c] for c in COMPONENTS]
    prompts = [prompt_text(QUESTION)] * 2
    completions = [CORRECT, WRONG]
    as_messages = [[{"role": "assistant", "content": c}] for c in completions]
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    for p, c in ((prompts, completions), (chat_prompts, as_messages)):
        values = {f.__name__: f(p, c, gold=[GOLD, GOLD], trainer_state=None) for f in funcs}
        assert values == {"format": [1.0, 1.0], "accuracy": [0.0, 1.0], "reward_model": [0.9, 0.2], "judge": [0.8, 0.3]}
    assert rm.calls[0][0] == [QUESTION, QUESTION]  # the question, recovered from the prompt
    funcs[2](prompts, completions, gold=[GOLD] * 2, question=["Q1", "Q2"])
    assert rm.calls[-1][0] == ["Q1", "Q2"]  # a `question` column wins
    # TRL's weighted sum has no gating: the correct, plausible solution beats the wrong one
    trl_total = [sum(w * values[name][i] for w, name in zip(weights, COMPONENTS)) for i in range(2)]
    assert trl_total == pytest.approx([0.5 + 0.9 + 0.8, 0.5 + 1.0 + 0.2 + 0.3]) and trl_total[0] > trl_total[1]
    with pytest.raises(ValueError, match="'gold' dataset column"):
        funcs[0](prompts, completions)


def test_trl_composite_applies_the_gating_and_scores_only_what_counts():
    texts = [CORRECT, WRONG, REASONING + "No idea."]
    rm = FakeScorer({WRONG: 0.25})  # raises KeyError if asked about anything but the wrong answer
    judge = FakeScorer({WRONG: 0.5})
    (composite,), weights = trl_reward_functions(rm, judge, composite=True)
    assert composite.__name__ == "pns_composite_reward" and weights == [1.0]
    totals = composite([prompt_text(QUESTION)] * 3, texts, gold=[GOLD] * 3)
    assert totals == pytest.approx([0.5, 0.5 + 1.0 + 0.25 + 0.5, -1.0])
    assert rm.calls == [([QUESTION], [WRONG])] and judge.calls == [([QUESTION], [WRONG])]
    expected = score_completions(texts, [GOLD] * 3, [False] * 3, [0.0, 0.25, 0.0], [0.0, 0.5, 0.0])
    assert totals == [r["total"] for r in expected]
    # a `truncated` column is honoured
    assert composite([prompt_text(QUESTION)], [WRONG], gold=[GOLD], truncated=[True]) == [-1.0]


def test_rewards_never_imports_torch():
    code = "import sys, pns_mini.rewards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
