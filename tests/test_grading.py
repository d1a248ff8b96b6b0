"""Grading: answer extraction and equivalence (pns_mini/grading.py).

What is checked:
* `extract_answer` on a table of completions: last box, nested braces, `\\fbox`, bare `\\boxed 5`,
  `#### N`, "Final Answer: **73**", chat-template debris, and what is NOT extracted (a last bare
  number, an unclosed box, a markdown `#### Step 1` heading, "the answer is not 5").
* `grade` on a table of (completion, gold, verdict) rows: the equivalences the module docstring
  promises, gold formats from every benchmark in shared/data (GSM8K numbers, MATH-500 LaTeX,
  OlympiadBench lists, College Math `$...$`, AMC `27.0`, AIME `033`), revising solutions, several
  boxes for find-all problems, and realistic messy completions. `is_correct` and
  `is_confidently_wrong` agree with the verdict on every row.
* The relative tolerance for decimals: `6.283185` ~ `2\\pi`, `0.333333` ~ `1/3`, `0.333` !~ `1/3`.
* Evaluation extraction (extraction="eval"): answers stated in words, a final-answer statement
  after an intermediate box, parts over several boxes; every strict row reads the same under it.
* Answer shapes for the negative rules: `is_numeric`, `answer_values`.
* Safety: code in an answer is never executed (a file it would create does not appear); power
  towers, 10**10**10, factorials of huge numbers, deep nesting and 2 MB inputs return at once,
  refused before sympy; an expensive well-formed answer ((10^7)!) hits the worker timeout, also
  when graded from a thread, and the worker is replaced.
* Counters: refusals and worker timeouts are counted in STATS, and the fast path decides plain
  numbers without the worker.
"""
import threading
import time

import pytest

from pns_mini import grading
from pns_mini.grading import extract_answer, final_boxes, grade, grade_answer, is_confidently_wrong, is_correct


@pytest.fixture(scope="module", autouse=True)
def worker():
    """Start the Math-Verify worker once, outside any timed section. The equivalence rows run
    with a generous worker timeout, so that a loaded test machine cannot turn a slow comparison
    into "unparseable"; the timeout test below sets the real one back."""
    grading.warm_up()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grading, "WORKER_TIMEOUT_S", 20.0)
        yield


# =============================================================================================
# Extraction
# =============================================================================================
LONG_SOLUTION = (
    "<|im_start|>assistant\n"
    "To solve this, first note that Janet's ducks lay 16 eggs per day. She eats 3 and bakes 4, "
    "so she has $16 - 3 - 4 = 9$ eggs left. Each sells for \\$2, so she makes $9 \\times 2 = 18$ "
    "dollars.\n\nLet me double check: 16 - 7 = 9, 9 * 2 = 18. Yes.\n\n"
    "Therefore the final answer is $\\boxed{18}$.<|im_end|>\n<|im_start|>user\n"
    "Now solve another one. What is 3 + 4?<|im_end|>\n<|im_start|>assistant\nIt is \\boxed{7}.<|im_end|>"
)

EXTRACTION = [
    pytest.param("so the answer is \\boxed{42}.", "42", id="box"),
    pytest.param("First \\boxed{3}, then finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", id="last-box"),
    pytest.param("\\boxed{\\left\\{ \\frac{a}{b_{1}} \\right\\}}", "\\left\\{ \\frac{a}{b_{1}} \\right\\}",
                 id="nested-braces"),
    pytest.param("\\boxed{\\begin{pmatrix} 1 \\\\ {2} \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ {2} \\end{pmatrix}",
                 id="matrix-box"),
    pytest.param("The result: \\fbox{17}", "17", id="fbox"),
    pytest.param("Thus $\\boxed 5$.", "5", id="bare-boxed"),
    pytest.param("\\boxed{\\boxed{9}}", "\\boxed{9}", id="box-in-box"),
    pytest.param("\\boxed{12}\n\nPlease reason step by step, and put your final answer within \\boxed{}.", "12",
                 id="empty-box-skipped"),
    pytest.param("She pays 3 * 6 = 18.\n#### 18", "18", id="gsm8k-hashes"),
    pytest.param("#### Step 1: count the eggs\nThere are 18.", None, id="markdown-heading-not-answer"),
    pytest.param("Final Answer: The final answer is $73$. I hope it is correct.", "73", id="minerva-final-answer"),
    pytest.param("**Final Answer:** **73**", "73", id="bold-after-final-answer"),
    pytest.param("Final Answer: **73**", "73", id="final-answer-bold"),
    pytest.param("The answer is: \\(\\frac{3}{4}\\)", "\\frac{3}{4}", id="answer-is-paren-math"),
    pytest.param("So the answer is 1,000 dollars.", "1,000", id="answer-is-token"),
    pytest.param("The answer is (C).", "(C)", id="answer-is-choice"),
    pytest.param("the answer is not 5, let me think again", None, id="answer-is-word"),
    pytest.param("She makes 9 * 2 = 18 dollars a day.", None, id="bare-number-not-extracted"),
    pytest.param("Therefore x = \\boxed{12", None, id="unclosed-box-truncated"),
    pytest.param("\\boxed{5} ... hmm, so it is \\boxed{7", None, id="unclosed-last-box-no-fallback"),
    pytest.param(LONG_SOLUTION, "18", id="chat-debris-after-end-of-turn"),
    pytest.param("<|endoftext|><|endoftext|>\\boxed{4}<|endoftext|>\\boxed{5}", "4", id="leading-end-tokens"),
    pytest.param("", None, id="empty"),
]


@pytest.mark.parametrize("text, expected", EXTRACTION)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_final_boxes_joins_only_adjacent_boxes():
    assert final_boxes("The roots are $\\boxed{1}$, $\\boxed{2}$ and \\boxed{3}.") == ["1", "2", "3"]
    assert final_boxes("\\boxed{5}. Wait, that is wrong: \\boxed{7}") == ["7"]
    assert final_boxes("no box here") == []


# =============================================================================================
# Grading table: (completion, gold, verdict)
# =============================================================================================
REVISING = (
    "Adding the two equations gives $2x = 10$, so $x = \\boxed{5}$.\n\n"
    "Wait, I made an arithmetic error: the second equation has $-4$, not $+4$. "
    "Redoing it: $2x = 14$, so $x = \\boxed{7}$."
)
FIND_ALL = "Factoring, $(x-1)(x-2)=0$, so the solutions are $\\boxed{1}$ and $\\boxed{2}$."
REPEATING = "The answer is \\boxed{72}. " * 40 + "The answer is \\box"
QWEN_MATH = (
    "<|im_start|>assistant\nWe convert $(0,3)$ to polar coordinates.\n\n"
    "**Step 1.** $r = \\sqrt{0^2 + 3^2} = 3$.\n\n**Step 2.** The point lies on the positive $y$-axis, "
    "so $\\theta = \\frac{\\pi}{2}$.\n\nThus the polar coordinates are "
    "$\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}$.<|im_end|><|endoftext|><|endoftext|>"
)
LLAMA = (
    "<|start_header_id|>assistant<|end_header_id|>\n\n## Step 1: Set up\nLet $n$ be the number...\n\n"
    "## Step 2: Solve\n$n = 27$.\n\nThe final answer is: $\\boxed{27}$<|eot_id|>"
)

GRADING = [
    # --- the equivalences the module promises ---
    pytest.param("\\boxed{1/2}", "0.5", "correct", id="slash-eq-decimal"),
    pytest.param("\\boxed{\\frac12}", "0.5", "correct", id="frac12-eq-decimal"),
    pytest.param("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", "correct", id="dfrac-eq-frac"),
    pytest.param("\\boxed{0.5}", "\\dfrac{1}{2}", "correct", id="decimal-eq-unwrapped-dfrac"),
    pytest.param("\\boxed{50\\%}", "50", "correct", id="percent-sign-is-a-unit"),
    pytest.param("\\boxed{0.5}", "50", "wrong", id="no-percent-leniency"),
    pytest.param("\\boxed{0.5}", "50\\%", "wrong", id="no-percent-leniency-gold-percent"),
    pytest.param("\\boxed{50}", "5000", "wrong", id="50-ne-5000"),
    pytest.param("\\boxed{\\{1,-2\\}}", "\\{1,-3\\}", "wrong", id="sets-differ"),
    pytest.param("\\boxed{\\{-2, 1\\}}", "1,-2", "correct", id="set-order-free"),
    pytest.param("\\boxed{1}, \\boxed{1}, \\boxed{-2}", "\\{1,-2\\}", "correct", id="set-duplicates-collapse"),
    pytest.param("\\boxed{1}", "\\{1,-2\\}", "wrong", id="one-of-two-roots"),
    pytest.param("\\boxed{[2,5)}", "[2,5]", "wrong", id="interval-ends-differ"),
    pytest.param("\\boxed{(-\\infty,0)}", "(-\\infty, 0]", "wrong", id="interval-infinity-ends-differ"),
    pytest.param("\\boxed{(x+1)^2}", "x^2+2x+1", "correct", id="symbolic-expand"),
    pytest.param("\\boxed{10\\text{ cm}}", "10", "correct", id="unit-text-cm"),
    pytest.param("\\boxed{10}", "10\\text{ cm}", "correct", id="unit-on-gold"),
    pytest.param("\\boxed{\\$18}", "18", "correct", id="dollar-sign"),
    pytest.param("\\boxed{18}", "\\$18", "correct", id="dollar-sign-gold"),
    pytest.param("\\boxed{1,000}", "1000", "correct", id="thousands-comma"),
    pytest.param("\\boxed{004}", "4", "correct", id="leading-zeros"),
    pytest.param("\\boxed{18.0}", "18", "correct", id="trailing-zero-decimal"),
    pytest.param("\\boxed{6.283185}", "2\\pi", "correct", id="decimal-approximates-2pi"),
    pytest.param("\\boxed{0.333}", "1/3", "wrong", id="0.333-ne-1/3"),
    pytest.param("\\boxed{-2/3}", "2/3", "wrong", id="sign-matters"),
    pytest.param("\\boxed{\\text{Sunday}}", "Sunday", "correct", id="text-word"),
    pytest.param("\\boxed{Monday}", "\\text{Sunday}", "wrong", id="text-word-wrong"),
    pytest.param("\\boxed{five}", "5", "unparseable", id="word-vs-number-is-not-judged"),
    pytest.param("\\boxed{1000000.4}", "1000000", "wrong", id="no-tolerance-for-exact-integers"),
    pytest.param("\\boxed{9/7}", "\\dfrac{9}{7}", "correct", id="unwrapped-dfrac-gold"),
    pytest.param("\\boxed{\\sqrt{17}}", "\\sqrt{17}", "correct", id="unwrapped-sqrt-gold"),
    pytest.param("\\boxed{4.1231056}", "\\sqrt{17}", "correct", id="decimal-approximates-sqrt"),
    pytest.param("\\boxed{4.12}", "\\sqrt{17}", "wrong", id="coarse-decimal-of-sqrt"),
    # --- extraction-driven rows ---
    pytest.param(REVISING, "7", "correct", id="revising-last-box-counts"),
    pytest.param(REVISING, "5", "wrong", id="revising-first-box-does-not-count"),
    pytest.param(FIND_ALL, "\\{1,2\\}", "correct", id="find-all-boxes-vs-set"),
    pytest.param(FIND_ALL, "1, 2", "correct", id="find-all-boxes-vs-list"),
    pytest.param(FIND_ALL, "\\{1,3\\}", "wrong", id="find-all-boxes-wrong"),
    pytest.param("\\boxed{1} or \\boxed{2}", "1, 2", "wrong", id="boxes-joined-by-or-are-not-a-list"),
    pytest.param("**Final Answer:** **73**", "73", "correct", id="bold-final-answer"),
    pytest.param("Final Answer: The final answer is $73$. I hope it is correct.", "73", "correct", id="minerva-format"),
    pytest.param("She earns 9 * 2 = 18 dollars.\n#### 18", "18", "correct", id="gsm8k-format"),
    pytest.param("She earns 9 * 2 = 18 dollars per day.", "18", "no_answer", id="bare-number-is-no-answer"),
    pytest.param("I am not sure how to solve this.", "18", "no_answer", id="no-answer-at-all"),
    pytest.param("So x = \\boxed{1", "1", "no_answer", id="truncated-box"),
    pytest.param(LONG_SOLUTION, "18", "correct", id="debris-after-im-end"),
    pytest.param(REPEATING, "72", "correct", id="degenerate-repetition"),
    pytest.param(QWEN_MATH, "\\left( 3, \\frac{\\pi}{2} \\right)", "correct", id="qwen-polar-coordinates"),
    pytest.param(LLAMA, "27.0", "correct", id="llama-header-amc-float-gold"),
    # --- gold formats from the benchmark files ---
    pytest.param("\\boxed{18}", "18", "correct", id="gsm8k-number"),
    pytest.param("\\boxed{17}", "18", "wrong", id="gsm8k-number-wrong"),
    pytest.param("\\boxed{33}", "033", "correct", id="aime-leading-zero-gold"),
    pytest.param("\\boxed{27}", "27.0", "correct", id="amc-float-gold"),
    pytest.param("\\boxed{(3,\\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", "correct", id="math500-left-right"),
    pytest.param("\\boxed{(3,\\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", "wrong", id="math500-tuple-wrong"),
    pytest.param("\\boxed{C}", "\\text{(C)}", "correct", id="math500-choice-letter"),
    pytest.param("\\boxed{\\textbf{(C)}}", "\\text{(C)}", "correct", id="math500-choice-bold"),
    pytest.param("\\boxed{(B)}", "\\text{(C)}", "wrong", id="math500-choice-wrong"),
    pytest.param("\\boxed{p-q}", "p - q", "correct", id="math500-expression"),
    pytest.param("\\boxed{-q+p}", "p - q", "correct", id="math500-expression-reordered"),
    pytest.param("\\boxed{q-p}", "p - q", "wrong", id="math500-expression-wrong"),
    pytest.param("\\boxed{(2,12)\\cup(12,102)}", "(2,12) \\cup (12,102)", "correct", id="math500-union"),
    pytest.param("\\boxed{\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}}",
                 "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "correct", id="math500-matrix"),
    pytest.param("\\boxed{\\begin{pmatrix}-1&0\\\\0&1\\end{pmatrix}}",
                 "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "wrong", id="math500-matrix-wrong"),
    pytest.param("\\boxed{76}", "76^\\circ", "correct", id="math500-degrees"),
    pytest.param("\\boxed{\\frac{270}{7}^\\circ}", "\\frac{270}7\\text{ degrees}", "correct", id="math500-degrees-text"),
    pytest.param("\\boxed{10080}", "10,\\!080", "correct", id="math500-thin-space-thousands"),
    pytest.param("\\boxed{18.9}", "\\$18.90", "correct", id="math500-dollars-cents"),
    pytest.param("\\boxed{\\frac95}", "1\\frac{4}{5}", "correct", id="math500-mixed-number"),
    pytest.param("\\boxed{1+\\sqrt{19}, 1-\\sqrt{19}}", "1 \\pm \\sqrt{19}", "correct", id="math500-plus-minus"),
    pytest.param("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt3}", "correct", id="rationalised-denominator"),
    pytest.param("\\boxed{x=5}", "5", "correct", id="assignment-answer"),
    pytest.param("\\boxed{5!}", "120", "correct", id="factorial-keeps-its-bang"),
    pytest.param("The answer is 42!", "42", "correct", id="exclamation-after-prose-answer"),
    pytest.param("\\boxed{3, \\frac12}", "\\frac{1}{2}, 3", "correct", id="olympiad-list-gold"),
    pytest.param("\\boxed{(1,1)}, \\boxed{(3,2)}", "$(1,1), (3,2)$", "correct", id="olympiad-pairs-two-boxes"),
    pytest.param("\\boxed{2}", "2", "correct", id="olympiad-single"),
    pytest.param("\\boxed{10-4n}", "$10-4 n$", "correct", id="college-dollar-wrapped"),
    pytest.param("\\boxed{-4n+10}", "$10-4 n$", "correct", id="college-dollar-wrapped-reordered"),
    pytest.param("\\boxed{10+4n}", "$10-4 n$", "wrong", id="college-wrong"),
    pytest.param("\\boxed{-2, 6}", "$x=-2,6$", "correct", id="college-assignment-list"),
    pytest.param("\\boxed{547000}", "5.47e5", "correct", id="minerva-scientific"),
    pytest.param("\\boxed{5.47 \\times 10^{5}}", "5.47e5", "correct", id="minerva-times-ten"),
    pytest.param("\\boxed{5.5 \\times 10^{5}}", "5.47e5", "wrong", id="minerva-scientific-wrong"),
    # --- not graded: never "wrong" ---
    pytest.param("\\boxed{" + "1" * 1500 + "}", "1", "unparseable", id="over-length-bound"),
    pytest.param("\\boxed{x^{2}}", "The rank of the matrix is 3, so both systems are consistent.",
                 "unparseable", id="gold-is-prose"),
]


@pytest.mark.parametrize("completion, gold, verdict", GRADING)
def test_grade(completion, gold, verdict):
    result = grade(completion, gold)
    assert result.verdict == verdict, result
    assert is_correct(completion, gold) == (verdict == "correct")
    assert is_confidently_wrong(completion, gold) == (verdict == "wrong")


def test_table_is_large_enough():
    assert len(GRADING) >= 60


def test_grade_reports_the_answer_that_decided():
    assert grade(FIND_ALL, "\\{1,2\\}").answer == "1, 2"
    assert grade(REVISING, "7").answer == "7"
    assert grade("nothing", "7").answer is None


# =============================================================================================
# Evaluation extraction (extraction="eval"): as the Qwen2.5-Math harness and Math-Verify read answers
# =============================================================================================
DUCKS = ("Janet's ducks lay 16 eggs a day. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 are left, "
         "and at $2 each she makes 9 * 2 = 18 dollars.\n\n")

EVAL_GRADING = [  # (completion, gold, strict verdict, eval verdict)
    # --- a final answer stated in words, no box ---
    pytest.param(DUCKS + "Final Answer: The amount Janet makes every day at the farmers' market is 18 dollars.",
                 "18", "no_answer", "correct", id="final-answer-sentence"),
    pytest.param("The diagonal of a square of side 3 is $\\sqrt{3^2 + 3^2} = \\sqrt{18}$, which simplifies. "
                 "So the answer is 3 \\sqrt{2}.", "3\\sqrt{2}", "wrong", "correct", id="answer-over-two-tokens"),
    pytest.param("Multiplying the two results, $6 \\times 7 = 42$.\n\n**Final Answer**\n\\[ 42 \\]", "42",
                 "no_answer", "correct", id="final-answer-heading"),
    pytest.param("There are 6 rows of 7 chairs, so the final answer to the question is 42.", "42",
                 "no_answer", "correct", id="final-answer-to-the-question-is"),
    pytest.param("Each of the 3 friends gets 12 / 3 = 4 cookies.\nThe answer is 4 cookies per friend.", "4",
                 "correct", "correct", id="number-then-unit-words"),
    # --- a later explicit final-answer statement beats an earlier, intermediate box ---
    pytest.param("First we find the width: $w = \\boxed{4}$. The length is $w + 6 = 10$.\n\n"
                 "Final Answer: The final answer is $10$. I hope it is correct.", "10", "wrong", "correct",
                 id="minerva-statement-after-intermediate-box"),
    pytest.param("The common difference is $\\boxed{3}$, so the fifth term is $0 + 4 \\cdot 3 = 12$. "
                 "Therefore, the final answer is 12.", "12", "wrong", "correct", id="statement-after-box"),
    pytest.param("So the total is \\boxed{18}.\n\nFinal Answer: The final answer is 20. I hope it is correct.",
                 "18", "correct", "wrong", id="later-statement-wins-even-when-wrong"),
    pytest.param("\\boxed{5} is what I get. The answer is clear now.", "5", "correct", "correct",
                 id="statement-without-a-value-keeps-the-box"),
    # --- an answer split over several boxes for several parts ---
    pytest.param("(a) The train covers 60 km in 4 hours, so its speed is \\boxed{15} km/h.\n\n"
                 "(b) At that speed 60 km more take 60 / 15 = \\boxed{4} hours.", "15, 4", "wrong", "correct",
                 id="two-parts-two-boxes"),
    pytest.param("(a) The train covers 60 km in 4 hours, so its speed is \\boxed{15} km/h.\n\n"
                 "(b) At that speed 60 km more take 60 / 15 = \\boxed{5} hours.", "15, 4", "wrong", "wrong",
                 id="two-parts-one-wrong"),
    pytest.param("Adding the equations gives $2x = 6$, so $x = \\boxed{3}$. Substituting back, "
                 "$y = 7 - x = \\boxed{4}$.", "(3, 4)", "wrong", "wrong", id="a-tuple-is-one-part"),
    # --- still not extracted in eval ---
    pytest.param("She earns 9 * 2 = 18 dollars per day.", "18", "no_answer", "no_answer", id="eval-no-bare-number"),
    pytest.param("I first thought 5, but the answer is not 5: the remainder is 7.", "7", "no_answer", "no_answer",
                 id="eval-answer-is-not"),
    pytest.param("The answer is \\boxed{72}. " * 3 + "The answer is \\box", "72", "correct", "correct",
                 id="eval-cut-off-box-after-statement"),
]


@pytest.mark.parametrize("completion, gold, strict, verdict", EVAL_GRADING)
def test_eval_extraction(completion, gold, strict, verdict):
    assert grade(completion, gold).verdict == strict  # the default is strict
    result = grade(completion, gold, extraction="eval")
    assert result.verdict == verdict, result
    assert is_correct(completion, gold, extraction="eval") == (verdict == "correct")
    assert is_confidently_wrong(completion, gold, extraction="eval") == (verdict == "wrong")


def test_eval_extraction_keeps_every_strict_table_row():
    """Every row of the strict tables reads the same under eval (none of them is of a kind eval adds)."""
    for row in GRADING:
        completion, gold, verdict = row.values
        assert grade(completion, gold, extraction="eval").verdict == verdict, row.id
    for row in EXTRACTION:
        text, expected = row.values
        assert extract_answer(text, extraction="eval") == expected, row.id


def test_extraction_must_be_known():
    with pytest.raises(ValueError, match="extraction='loose': accepted strict | eval"):
        grade("\\boxed{1}", "1", extraction="loose")


@pytest.mark.parametrize("answer, numeric, values", [
    ("18", True, 1), ("\\$18", True, 1), ("18 \\text{ apples}", True, 1), ("-\\frac{3}{4}", True, 1),
    ("2\\sqrt{3}", True, 1), ("3\\pi", True, 1), ("5!", True, 1), ("x = 18", True, 1), ("1,000", True, 1),
    ("x", False, 1), ("ab", False, 1), ("2x", False, 1), ("\\infty", False, 1), ("(3, 4)", False, 1),
    ("18, 19", False, 2), ("\\{18, 19\\}", False, 2), ("18 \\text{ or } 19", False, 2), ("18 \\pm 1", False, 2),
])
def test_answer_shapes(answer, numeric, values):
    """What rewards' negative rules ask of an answer: one number? how many values?"""
    assert grading.is_numeric(answer) == numeric
    assert grading.answer_values(answer) == values


# =============================================================================================
# Tolerance: relative 1e-6, and only for values with no finite decimal expansion
# =============================================================================================
@pytest.mark.parametrize(
    "answer, gold, verdict",
    [
        ("6.283185", "2\\pi", "correct"),  # |6.283185 - 2pi| = 3.1e-7 <= 1e-6 * 6.28
        ("6.28", "2\\pi", "wrong"),  # 3.2e-3 > 6.3e-6
        ("0.333333", "1/3", "correct"),  # 1/3e6 <= 1e-6 * 1/3: exactly on the bound, kept
        ("0.33333", "1/3", "wrong"),  # 3.3e-6 > 3.3e-7
        ("0.333", "1/3", "wrong"),
        ("38.571429", "\\frac{270}{7}", "correct"),  # 4.3e-7 <= 3.9e-5
        ("0.15", "\\frac{3}{20}", "correct"),  # terminating: must be (and is) exact
        ("0.1500001", "\\frac{3}{20}", "wrong"),  # terminating gold: no tolerance at all
        ("0.0000673", ".0000672", "wrong"),  # Math-Verify's default 6-place rounding says equal
    ],
)
def test_relative_tolerance(answer, gold, verdict):
    assert grade_answer(answer, gold).verdict == verdict


# =============================================================================================
# Safety and time bounds
# =============================================================================================
@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('touch {target}')",
        "eval(\"__import__('os').system('touch {target}')\")",
        "exec(\"import os; os.system('touch {target}')\")",
        "(lambda: __import__('os').system('touch {target}'))()",
        "().__class__.__base__.__subclasses__()",
        "open('{target}', 'w')",
    ],
)
def test_code_in_an_answer_is_refused_and_never_run(payload, tmp_path):
    target = tmp_path / "pwned"
    completion = "\\boxed{" + payload.format(target=target) + "}"
    result = grade(completion, "0")
    assert result.verdict == "unparseable" and result.how == "unsafe"
    assert not target.exists()


def test_worker_does_not_run_code_even_past_the_refusal(tmp_path):
    """Defence in depth: the worker only uses Math-Verify's LaTeX parser, which has no eval."""
    target = tmp_path / "pwned"
    verdict, _ = grading._ask_worker(f"__import__('os').system('touch {target}')", "0")
    assert verdict != "correct"
    assert not target.exists()


def _timed(completion, gold):
    start = time.monotonic()
    result = grade(completion, gold)
    return result, time.monotonic() - start


@pytest.mark.parametrize(
    "completion",
    [
        pytest.param("\\boxed{9^{9^{9^9}}}", id="power-tower"),
        pytest.param("\\boxed{10**10**10}", id="python-power"),
        pytest.param("\\boxed{99999999999!}", id="factorial-of-a-huge-number"),  # 2.8 s in the worker before
        pytest.param("\\boxed{(10!)!}", id="factorial-of-a-factorial"),
        pytest.param("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", id="5000-nested-braces"),
        pytest.param("\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}", id="400-nested-braces"),
        pytest.param("\\boxed{" + "1" * 2_000_000 + "}", id="2MB-answer"),
        pytest.param("The answer is " + " " * 2_000_000 + "\\boxed{5", id="2MB-spaces"),
    ],
)
def test_adversarial_answers_return_at_once_and_are_not_correct(completion):
    worker_calls = grading.STATS["worker_calls"]
    result, seconds = _timed(completion, "5")
    assert result.verdict in ("unparseable", "no_answer"), result
    assert seconds < 1.0  # refused before sympy; the worker is never asked
    assert grading.STATS["worker_calls"] == worker_calls


def test_2MB_of_boxes_is_read_in_bounded_time():
    """Only the last _MAX_JOINED_BOXES boxes can be joined, and only the text's end is read."""
    worker_calls = grading.STATS["worker_calls"]
    result, seconds = _timed("\\boxed{1}, " * 200_000, "2, 3")
    assert result.verdict == "wrong" and result.answer == "1"  # 1 != {2, 3}, nor is {1} (20 boxes)
    assert seconds < 3.0
    assert grading.STATS["worker_calls"] == worker_calls


def test_timeout_is_bounded_in_a_thread_and_counted(monkeypatch):
    monkeypatch.setattr(grading, "WORKER_TIMEOUT_S", 2.0)  # the module's default
    grading.warm_up()  # a cold worker start is not part of the bound
    timeouts = grading.STATS["worker_timeouts"]
    out = {}

    def run():  # (10^7)! passes every refusal; sympy then needs far longer than the timeout
        out["result"], out["seconds"] = _timed("\\boxed{(10^{7})!}", "3")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert out["result"].verdict == "unparseable" and out["result"].how == "timeout"
    assert out["seconds"] < 3.0
    assert grading.STATS["worker_timeouts"] == timeouts + 1
    # The worker was replaced: the next comparison still works.
    assert grade_answer("(y+1)^2", "y^2+2y+1").verdict == "correct"


def test_fast_path_decides_numbers_without_the_worker():
    worker_calls = grading.STATS["worker_calls"]
    start = time.monotonic()
    for i in range(2000):  # distinct pairs, so nothing comes from the cache
        dollars = (i + 1) * 1000
        assert grade(f"So she pays \\${dollars:,} in all.\n#### {dollars:,}", str(dollars)).verdict == "correct"
        assert grade(f"\\boxed{{{i}.5}}", f"{2 * i + 1}/2").verdict == "correct"
    assert grading.STATS["worker_calls"] == worker_calls
    assert time.monotonic() - start < 4.0  # ~0.1 ms a call; a generous bound


def test_bad_arguments_are_errors():
    with pytest.raises(TypeError):
        grade("\\boxed{27}", 27.0)
    with pytest.raises(ValueError, match="empty"):
        grade("\\boxed{27}", "  ")
