r"""The negative generator's reward: four named components and the gated composite.

Stage 1 of PNS trains a generator by reverse RL: it is rewarded for solutions that are WRONG
but look right. The paper gives the parts of its reward; the weights and the gating are ours:

    format        1 if the completion is well-formed (`format_check`) and, when its answer is
                  wrong, a real negative (`negative_reason`), else 0
    accuracy      1 if its final answer is verified WRONG and a real negative (accuracy inversion)
    reward_model  a reward model's score of the solution, normalised to [0, 1]
    judge         an LLM judge's rubric score of the reasoning, normalised to [0, 1]

    total = malformed_penalty                                        if not well-formed
          = w_f * format + w_a * accuracy + w_rm * rm + w_j * judge  if verified wrong
          = w_f * format                                             otherwise (correct)

Every component is pure, returned separately and logged. A model score given as a list is
logged even where gating keeps it out of the total; a scorer is run only where it counts
(`score_completions`: 0.0 elsewhere; stage 1 logs the means over those rows as scored/*).
The anti-hacking choices, each detailed next to its rule below:

* An answer that cannot be found or parsed is a FORMAT failure, never a "wrong answer" win
  (else the cheapest wrong answer would be no answer at all).
* A negative is ONE real wrong answer reached by its own reasoning (`negative_check`, also used
  by synthesis); a hedge or a self-contradiction is a format failure: paying it would teach the
  generator to hedge, and a DPO pair built on it would push the correct answer down too.
* Format gates everything (`malformed_penalty`), so the generator cannot trade format for
  plausibility; plausibility counts only for verified-wrong answers, so it is not paid for
  drifting back to correct answers, however well written.
* The reward model and the judge never see the gold answer; they only rate how the solution looks.

Default weights (`DEFAULT_REWARD_WEIGHTS`; the paper gives none), with rm and judge in [0, 1]:
    malformed (-1)  <  correct (0.5)  <  wrong, least plausible (1.5)  <=  wrong (1.5 .. 3.5).
Format is learned first (malformed -> well-formed is 1.5, correct -> wrong is 1); rm and judge
weigh the same (neither is known to be better calibrated) and together span twice the accuracy
step, so among wrong answers plausibility dominates (the point of the method). Only these
differences matter under GRPO's group-normalised advantages. The ordering holds for any
non-negative weights with accuracy > 0 and malformed_penalty < format weight (checked).

No torch here: model scores arrive as lists of floats from pns_mini.scorers (or from the scorer
objects the TRL adapters in trl_rewards.py are given).
"""
from __future__ import annotations

import math
import re

from pns_mini import grading
from pns_mini.data import BOXED_COMMAND

COMPONENTS = ("format", "accuracy", "reward_model", "judge")
DEFAULT_REWARD_WEIGHTS = {"format": 0.5, "accuracy": 1.0, "reward_model": 1.0, "judge": 1.0}
MALFORMED_PENALTY = -1.0

# Format rule defaults (format_check's keyword arguments).
MIN_CHARS = 40  # a whole solution shorter than this (stripped) is too short to hold reasoning
MAX_CHARS = 6000  # ~1500 tokens; longer non-truncated text is rambling (raise it for long-CoT models)
MAX_REPEAT_RATIO = 0.5  # at most half of the word 4-grams may be repeats of earlier ones
MIN_REASONING_WORDS = 10  # words (\w+ runs, so "3*4=12" is 3) before the final \boxed
MAX_TRAILING_CHARS = 30  # non-space, non-punctuation characters allowed after the final box

# The rules a wrong answer must pass to be a negative (`negative_reason`), in the order checked.
NEGATIVE_REASONS = ("several_answers", "not_a_number", "gold_stated", "answer_after_box", "gold_before_box")
FORMAT_REASONS = ("truncated", "too_long", "too_short", "repetition", "no_boxed", "unparseable",
                  "no_reasoning_before_answer", "text_after_answer", *NEGATIVE_REASONS)


# ---------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------
def repeat_ratio(text: str, n: int = 4) -> float:
    """Share of the word n-grams (lowercased, whitespace-split) that repeat an earlier one:
    1 - unique / total, 0.0 without n-grams; a sentence looped k times gives about (k - 1) / k."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


_TRAILER_NOISE = re.compile(r"\s|[.,;:!?$*()\[\]\\]")  # whitespace, punctuation, $, \] and \) delimiters


def format_check(completion: str, truncated: bool, *, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                 max_repeat_ratio: float = MAX_REPEAT_RATIO, min_reasoning_words: int = MIN_REASONING_WORDS,
                 max_trailing_chars: int = MAX_TRAILING_CHARS) -> tuple[bool, str]:
    r"""(ok, reason): whether `completion` is a well-formed solution; reason is "" when ok, else
    the FIRST failed rule's code, checked in this order:

    "truncated"    no EOS within the length limit: the answer may be cut off, and rewarding it
                   would teach the generator to ramble to the limit.
    "too_long" / "too_short"  more than `max_chars` / fewer than `min_chars` characters (stripped).
    "repetition"   more than `max_repeat_ratio` of its word 4-grams repeat earlier ones
                   (`repeat_ratio`): degenerate loops are not solutions.
    "no_boxed"     no `\boxed{` (data.BOXED_COMMAND): "#### 5" or "the answer is 5" do not count
                   here, though grading reads them.
    "unparseable"  the last `\boxed{` is never closed or is empty, or grading.extract_answer does
                   not return exactly that box's answer (e.g. a later `\fbox{}`).
    "no_reasoning_before_answer"  fewer than `min_reasoning_words` words (\w+ runs) before the
                   last box: a bare answer is not a solution, and the scorers need reasoning to rate.
    "text_after_answer"  more than `max_trailing_chars` characters after the box besides
                   `_TRAILER_NOISE`: "\boxed{18} dollars. I hope it is correct." passes; a second
                   solution or a revised answer fails.

    Every rule reads the visible answer only: a `<think>...</think>` block is dropped first
    (grading.after_thinking), and a `<think>` that never closes leaves nothing ("too_short").
    No gold is needed; `negative_check` adds the rules that need one.
    """
    if truncated:
        return False, "truncated"
    text = grading.after_thinking(completion).strip()  # the answer after a <think> block, see above
    if len(text) > max_chars:
        return False, "too_long"
    if len(text) < min_chars:
        return False, "too_short"
    if repeat_ratio(text) > max_repeat_ratio:
        return False, "repetition"
    boxed = [box for box in grading.find_boxes(text) if text.startswith(BOXED_COMMAND + "{", box[0])]
    if not boxed:
        return False, "no_boxed"
    start, end, content = boxed[-1]
    if content is None or grading.extract_answer(text) != content.strip():
        return False, "unparseable"
    if len(re.findall(r"\w+", text[:start])) < min_reasoning_words:
        return False, "no_reasoning_before_answer"
    if len(_TRAILER_NOISE.sub("", text[end:])) > max_trailing_chars:
        return False, "text_after_answer"
    return True, ""


# ---------------------------------------------------------------------------------------------
# What a negative is: one real wrong answer, reached by its own reasoning
# ---------------------------------------------------------------------------------------------
# Words after the final box that take it back or offer another answer.
_TAKEN_BACK = re.compile(r"\b(?:or|actually|instead|rather|wait|otherwise|maybe|perhaps)\b", re.IGNORECASE)
# A plain number in prose, not an exponent, index or part of a word or command (x^2, a_1, \frac12).
_PROSE_NUMBER = re.compile(r"(?<![\w^_{.\\])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w.]*\d)")
# A stated RESULT: the right-hand side of an "=" (`= 18`, `= \frac{19}{2}`), or a number that ends
# a clause ("he has 18 apples.", "18,", "$18$"). "he has 22 - 4 = 18 apples, so" states 18;
# "adding 6 to 18 gives" states nothing.
_ENDS_CLAUSE = re.compile(r"(?:\s*+[A-Za-z]{2,}){0,2}\s*+(?:[.,;:!?\n]|\$|\\[\])]|\*\*)")
_RIGHT_HAND_SIDE = re.compile(r"=\s*+([^=$\n,;]*?)(?=\s[A-Za-z]{2}|[=$\n,;]|\\[\])]|\.(?:\s|$)|$)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_MAX_STATEMENTS = 8  # the last 8 other boxes and answer statements are compared with the gold (time bound)


def _last_result(text: str) -> str | None:
    """The last result `text` states (see _RIGHT_HAND_SIDE and _ENDS_CLAUSE), or None."""
    found = [(m.start(), m.group()) for m in _PROSE_NUMBER.finditer(text) if _ENDS_CLAUSE.match(text, m.end())]
    found += [(m.start(), m.group(1).strip()) for m in _RIGHT_HAND_SIDE.finditer(text) if re.search(r"\d", m.group(1))]
    return max(found)[1] if found else None


def negative_reason(completion: str, gold: str) -> str:
    r"""Why a completion whose answer grading calls "wrong" is NOT a negative sample, or "" when it
    is one. The rules (NEGATIVE_REASONS), checked in this order against the answer turn:

    "several_answers"  the final answer offers more than one: boxes side by side or joined by "or"
                  (`\boxed{19} \boxed{20}`, `\boxed{18} or \boxed{19}`), or one box holding
                  several values (`18, 19`, `18 \text{ or } 19`, `18 \pm 1`) when the gold is one
                  value. Boxes listed with commas/"and" are fine for a gold of several values.
    "not_a_number" the gold is a number but the answer is not (grading.is_numeric): `\boxed{x}`,
                  `\boxed{2x}`. Any number counts, `\frac{5}{2}` against 18 too.
    "gold_stated"  a box or answer statement ANYWHERE ("the answer is 18", `#### 18`, an earlier
                  `\boxed{18}` "revised" later) is equivalent to the gold: a hedge.
    "answer_after_box"  after the final box, a number other than its value, or a word taking it
                  back ("or", "actually", "wait", "instead"...): `\boxed{19}, or maybe 20`.
    "gold_before_box"  (numeric gold) the last result stated in the final box's sentence and the
                  one before it is the gold: `22 - 4 = 18 apples. The final answer is \boxed{24}`
                  did not reach 24 by its own reasoning.

    Still negatives: an arithmetic slip carried to the end, a wrong operation, a misread question,
    an invented step (the gold may appear mid-reasoning if later steps lead away from it), a
    `$`-wrapped box, a fraction against an integer gold, one wrong boxed value revised into
    another. Regexes and grading's comparisons only (numbers mostly take its fast path)."""
    answer = grading.extract_answer(completion)
    boxes = grading.boxes_of(completion)
    turn = grading.answer_turn(completion)
    single_gold = grading.answer_values(gold) == 1
    if answer is not None and boxes:
        final = boxes[-1]
        if single_gold and grading.answer_values(final[2]) > 1:
            return "several_answers"
        if len(boxes) >= 2:
            joined = grading.box_gap(turn[boxes[-2][1] : final[0]])
            if joined == "alternatives" or (joined == "list" and single_gold):
                return "several_answers"
    if answer is not None and grading.is_numeric(gold) and not grading.is_numeric(answer):
        return "not_a_number"
    stated = dict.fromkeys(a for _, a in grading.answer_statements(completion) if a != answer)  # distinct, in order
    if any(grading.grade_answer(a, gold).verdict == "correct" for a in list(stated)[-_MAX_STATEMENTS:]):
        return "gold_stated"
    if not boxes or answer is None:
        return ""
    start, end, value = boxes[-1]
    trailer = turn[end : end + 1000]
    if _TAKEN_BACK.search(trailer) or any(grading.grade_answer(m.group(), value).verdict != "correct"
                                          for m in _PROSE_NUMBER.finditer(trailer)):
        return "answer_after_box"
    if grading.is_numeric(gold):
        sentences = [s for s in _SENTENCE_END.split(turn[max(0, start - 2000) : start]) if re.search(r"\w", s)]
        result = _last_result(" ".join(sentences[-2:]) + " ")
        if result is not None and grading.grade_answer(result, gold).verdict == "correct":
            return "gold_before_box"
    return ""


def negative_check(completion: str, truncated: bool, gold: str, **format_kw) -> tuple[bool, str, grading.Grade]:
    """(well_formed, reason, grade): THE check of a completion, used by the stage-1 reward
    (`score_completions`) and by synthesis; a negative sample iff well_formed and grade.verdict is
    "wrong". well_formed: `format_check` passes, grading could compare the answer with the gold
    (verdict "correct" or "wrong", else reason "unparseable"), and for a wrong answer
    `negative_reason` finds nothing (a correct answer is judged by format_check alone). reason: ""
    or the first failed rule's code (FORMAT_REASONS). format_kw: format_check's thresholds."""
    ok, reason = format_check(completion, bool(truncated), **format_kw)
    graded = grading.grade(completion, gold)
    if ok and graded.verdict not in ("correct", "wrong"):
        ok, reason = False, "unparseable"  # a box the grader cannot compare is a format failure
    if ok and graded.verdict == "wrong":
        reason = negative_reason(completion, gold)
        ok = not reason
    return ok, reason, graded


def accuracy_inversion_reward(completion: str, gold: str) -> float:
    """1.0 when the final answer is verified wrong (grading.is_confidently_wrong: extracted,
    parsed, and unequal to `gold` under every check) and `negative_reason` finds nothing, else
    0.0 (no answer, an unparseable one and a hedge included). Independent of format_check: a
    truncated real wrong answer still scores 1.0 here."""
    return 1.0 if grading.is_confidently_wrong(completion, gold) and not negative_reason(completion, gold) else 0.0


# ---------------------------------------------------------------------------------------------
# Composite
# ---------------------------------------------------------------------------------------------
def resolve_weights(weights: dict[str, float] | None = None) -> dict[str, float]:
    """DEFAULT_REWARD_WEIGHTS overridden by `weights` (a partial dict is fine: {"judge": 0.0}
    drops the judge). Unknown names, negative or non-finite weights raise ValueError."""
    out = dict(DEFAULT_REWARD_WEIGHTS)
    for name, w in (weights or {}).items():
        if name not in COMPONENTS:
            raise ValueError(f"unknown reward component {name!r}; components: {', '.join(COMPONENTS)}")
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"reward weight {name}={w!r} must be a finite number >= 0")
        out[name] = float(w)
    return out


def weights_from_list(values: list[float]) -> dict[str, float]:
    """TRL-style `reward_weights` (a list, in COMPONENTS order) -> a weights dict."""
    if len(values) != len(COMPONENTS):
        raise ValueError(f"reward_weights needs {len(COMPONENTS)} numbers, one per component "
                         f"({', '.join(COMPONENTS)}), got {len(values)}")
    return resolve_weights(dict(zip(COMPONENTS, values)))


def parse_reward_weights(text: str | None) -> dict[str, float]:
    """'format=0.5,judge=0' -> every component's weight (DEFAULT_REWARD_WEIGHTS for the rest);
    '0.5,1,1,1' -> weights in COMPONENTS order (TRL's list form). ValueError names the problem."""
    if text is None or not text.strip():
        return resolve_weights(None)
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        if all("=" not in item for item in items):
            return weights_from_list([float(item) for item in items])
        pairs = [item.split("=", 1) for item in items]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("mix of name=value and bare numbers")
        return resolve_weights({name.strip(): float(value) for name, value in pairs})
    except ValueError as e:
        raise ValueError(f"--reward-weights {text!r}: {e} (expected e.g. "
                         f"'format=0.5,accuracy=1,reward_model=1,judge=1' or '0.5,1,1,1')") from None


def composite_reward(components: dict[str, float], weights: dict[str, float], *, format_ok: bool, wrong: bool,
                     malformed_penalty: float = MALFORMED_PENALTY, plausibility_only_when_wrong: bool = True) -> float:
    """The scalar reward of one completion from its components (each in [0, 1]): the module
    docstring's `total`. plausibility_only_when_wrong=False adds rm and judge to every well-formed
    completion (an ablation: a correct, convincing solution can then outscore a wrong one).
    `weights` must name every component (pass it through `resolve_weights`)."""
    if malformed_penalty >= weights["format"]:
        raise ValueError(f"malformed_penalty={malformed_penalty} must be below the format weight "
                         f"{weights['format']}, or a malformed completion would score like a correct one")
    if not format_ok:
        return malformed_penalty
    total = weights["format"] * components["format"] + weights["accuracy"] * components["accuracy"]
    if wrong or not plausibility_only_when_wrong:
        total += weights["reward_model"] * components["reward_model"] + weights["judge"] * components["judge"]
    return total


def _check_scores(name: str, scores: list[float] | None, n: int) -> list[float]:
    """Normalised model scores, or zeros when the scorer is off (None)."""
    if scores is None:
        return [0.0] * n
    if len(scores) != n:
        raise ValueError(f"{name}: {len(scores)} scores for {n} completions")
    for i, s in enumerate(scores):
        if not (isinstance(s, (int, float)) and 0.0 <= s <= 1.0):  # NaN fails this too
            raise ValueError(f"{name}[{i}] = {s!r} is not in [0, 1]: pass normalised scores "
                             f"(the scorer's __call__, not .raw)")
    return [float(s) for s in scores]


def plausibility_counts(row: dict, plausibility_only_when_wrong: bool = True) -> bool:
    """Whether the reward-model and judge terms enter a scored row's total: well-formed and
    verified wrong (every well-formed row with plausibility_only_when_wrong=False)."""
    return row["format"] == 1.0 and (row["accuracy"] == 1.0 or not plausibility_only_when_wrong)


def score_completions(completions: list[str], golds: list[str], truncated: list[bool], rm=None, judge=None,
                      weights: dict[str, float] | None = None, *, questions: list[str] | None = None,
                      malformed_penalty: float = MALFORMED_PENALTY, plausibility_only_when_wrong: bool = True,
                      **format_kw) -> list[dict]:
    """Grade and score a batch of completions, each graded once. One dict per completion:

    total         the composite reward (`composite_reward`)
    format        1.0 / 0.0: `negative_check`'s well_formed
    accuracy      1.0 / 0.0: = accuracy_inversion_reward
    reward_model, judge  the normalised scores (0.0 where not computed)
    answer        the extracted answer, or None
    verdict       grading's verdict: "correct" | "wrong" | "no_answer" | "unparseable" (a refused
                  negative keeps "wrong": its format_reason says why it is not a negative)
    format_reason "" or the failed rule's code (FORMAT_REASONS)

    rm / judge: None (off: 0.0), a list of normalised scores, one per completion (reported even
    where the gating leaves them out of `total`), or a scorer (questions, completions) ->
    normalised scores (the scorers' __call__), called once on the completions whose plausibility
    counts (`plausibility_counts`) and not at all at weight 0; a scorer needs `questions`.
    weights: partial overrides of DEFAULT_REWARD_WEIGHTS; format_kw: format_check's thresholds.
    """
    n = len(completions)
    if len(golds) != n or len(truncated) != n:
        raise ValueError(f"{n} completions but {len(golds)} golds and {len(truncated)} truncated flags")
    w = resolve_weights(weights)
    rows = []
    for i, (completion, gold) in enumerate(zip(completions, golds)):
        ok, reason, graded = negative_check(completion, bool(truncated[i]), gold, **format_kw)
        # a real wrong answer (= accuracy_inversion_reward, from the one grade() call): a refused
        # negative is a format failure AND earns no accuracy, whatever format_check said
        wrong = (graded.verdict == "wrong" and reason not in NEGATIVE_REASONS
                 and (ok or not negative_reason(completion, gold)))
        rows.append({"total": 0.0, "format": 1.0 if ok else 0.0, "accuracy": 1.0 if wrong else 0.0,
                     "answer": graded.answer, "verdict": graded.verdict, "format_reason": reason})
    counted = [i for i, r in enumerate(rows) if plausibility_counts(r, plausibility_only_when_wrong)]
    for name, label, scores in (("reward_model", "rm_scores", rm), ("judge", "judge_scores", judge)):
        if callable(scores):
            if questions is None or len(questions) != n:
                raise ValueError(f"a {name} scorer needs one question per completion")
            values = scores([questions[i] for i in counted], [completions[i] for i in counted]) \
                if counted and w[name] > 0 else [0.0] * len(counted)
            by_row = dict(zip(counted, _check_scores(label, values, len(counted))))
            scores = [by_row.get(i, 0.0) for i in range(n)]
        for r, s in zip(rows, _check_scores(label, scores, n)):
            r[name] = s
    for r in rows:
        r["total"] = composite_reward(r, w, format_ok=r["format"] == 1.0, wrong=r["accuracy"] == 1.0,
                                      malformed_penalty=malformed_penalty,
                                      plausibility_only_when_wrong=plausibility_only_when_wrong)
    return rows
