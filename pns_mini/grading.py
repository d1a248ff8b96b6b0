"""Answer extraction and equivalence: is a model's final answer the gold answer?

Model text is untrusted input, so grading is deterministic, bounded and safe:

* `extract_answer` finds the final answer (last `\\boxed{}`, else `#### N`, else an explicit
  "the answer is X" / "Final Answer: X"). A completion without one has NO answer: a last bare
  number is never taken, so a negative generator cannot score by leaving a guess lying around.
  Two readings, keyword `extraction` of `extract_answer`, `grade`, `is_correct` and
  `is_confidently_wrong`: "strict" (the default: the generator's reward and synthesis, box
  first) and "eval" (evaluate.py: as the Qwen2.5-Math harness and Math-Verify, a later explicit
  final-answer statement beats an earlier box, answers stated in words are read, and an answer
  split over several boxes for several parts is joined).
* `grade_answer` compares an answer with a gold answer in three steps, cheapest first:
  1. normalised strings (`\\text{Sunday}` = `Sunday`, `p - q` = `p-q`);
  2. a pure-Python number check with `fractions.Fraction` (`\\$1,000` = `1000.0`, `004` = `4`,
     `\\dfrac{1}{2}` = `0.5`, sets and tuples of numbers): decides most GSM8K/AIME/AMC rows in
     well under a millisecond and never calls sympy;
  3. Math-Verify (LaTeX -> sympy, symbolic and set/interval/matrix comparison) in a separate
     worker process, killed and restarted when one comparison takes over `WORKER_TIMEOUT_S`.
     The worker runs Math-Verify's LaTeX parser only, never its `ExprExtractionConfig` (that one
     calls sympy's `parse_expr`, i.e. `eval`); answers with Python-looking code (`__`, `import`,
     `lambda`, backticks...) are refused before they reach it anyway, and so are numeric power
     towers (`9^{9^{9}}`), exponents of 5+ digits, factorials of 5+ digit numbers or of
     factorials (`99999999999!`, `(10!)!`) and nesting over 20 deep, which would only cost a
     timeout and a worker restart.
* Every failure (too long, refused, too big, not parsed, timeout, worker crash, sympy error)
  gives the verdict "unparseable" and is counted in `STATS`; it is never a "wrong" answer. Only
  an answer that was extracted, parsed and compared unequal by every check is "wrong".

Equivalence choices (each one is a row of tests/test_grading.py):

* A percent sign is a unit, like `\\text{ cm}` or `^\\circ`: `50\\%` = `50`, and `0.5` != `50\\%`.
  There is no x100 leniency in either direction.
* Decimals: `18.0` = `18`, `0.5` = `1/2` exactly. A decimal counts as an approximation only of a
  value that has no finite decimal expansion (`1/3`, `2\\pi`, `\\sqrt 2`), and then it must be
  within a relative 1e-6: |answer - exact| <= 1e-6 * |exact|. So `6.283185` = `2\\pi` and
  `0.333333` = `1/3`, but `0.333` != `1/3`, and `1000000.4` != `1000000`. This tolerance applies
  to single numbers, not to the elements of tuples, sets or matrices.
* `1,000` (groups of three digits) is one thousand, not the list {1, 0}.
* Several boxes in a row (`\\boxed{1}, \\boxed{2}`, joined only by commas, "and", spaces or `$`)
  also count together as one list, for find-all problems (gold `\\{1, 2\\}`). Boxes separated by
  any other text are not joined: in a solution that revises itself the last box counts.
* Inherited from Math-Verify: letters are compared case-insensitively (`3R^2` = `3r^2`), a base
  subscript is dropped (`2516_8` = `2516`), `x = 5` = `5`, and `(1,2)` = `\\{1,2\\}`.
* Scientific notation `5.47e5` is a number (547000), never `5.47 * e * 5`.
* A plain word (`five`, `cat`) against a gold that is not a word (`5`) is "unparseable", not
  "wrong": Math-Verify would read it as the product f*i*v*e, and a negative generator must not
  earn "wrong answers" by boxing words. Word against word (`Monday` vs `\\text{Sunday}`) is graded.

Time: the worker compares in tens of milliseconds; a call waits at most `WORKER_TIMEOUT_S` for
it once it is running (a cold start, 1-3 s and more on a loaded machine, happens once per
process and after each timeout; `warm_up()` does it ahead of time). Calls from several threads
take turns on the one worker. POSIX only (the worker pipe is read with `select`).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Verdict = Literal["correct", "wrong", "no_answer", "unparseable"]

MAX_ANSWER_CHARS = 1000  # a longer answer (or gold) is "unparseable", never sent to sympy
WORKER_TIMEOUT_S = 2.0  # the most one Math-Verify comparison may take before the worker is killed
WORKER_START_TIMEOUT_S = 60.0  # a cold worker start (imports sympy + Math-Verify) takes 1-3 s
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap of the worker: a huge power fails, not swaps
REL_TOL = Fraction(1, 10**6)  # a decimal approximating 1/3, 2*pi...: |a - b| <= REL_TOL * |exact|
CACHE_SIZE = 1 << 16  # (answer, gold) pairs remembered, so repeated completions cost nothing

# Counters of what decided each comparison and of every failure (never swallowed silently):
# "fast_string", "fast_number", "cache_hits", "too_long", "unsafe", "too_big", "words",
# "worker_starts", "worker_calls", "worker_timeouts", "worker_crashes", and "worker:<how>" for each reply
# ("worker:math_verify", "worker:answer_not_parsed", "worker:error:RecursionError"...).
STATS: collections.Counter = collections.Counter()
_STATS_LOCK = threading.Lock()


def _count(key: str) -> None:
    with _STATS_LOCK:
        STATS[key] += 1


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one completion.

    verdict: "correct" | "wrong" | "no_answer" | "unparseable".
    answer: the extracted answer that was compared (boxes joined with ", " when the joined list
        decided), or None when nothing was extracted.
    how: what decided, e.g. "string", "number", "math_verify", "tolerance", "timeout",
        "too_long", "unsafe", "too_big", "words", "answer_not_parsed", "gold_not_parsed",
        "error:RecursionError", "not_extracted".
    """

    verdict: Verdict
    answer: str | None
    how: str


# =============================================================================================
# Extraction: the final answer of a completion
# =============================================================================================
# Decoding with special tokens kept leaves chat-template debris. The answer turn ends at its first
# end-of-turn token; whatever the model wrote after it (a new "user" turn...) is not its answer.
_END_OF_TURN = re.compile(
    r"<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end_of_text\|>|<\|end\|>|</s>|<\|im_start\|>"
    r"|<｜end▁of▁sentence｜>"
)
_ROLE_HEADER = re.compile(
    r"^[ \t]*+(?:assistant|user|system)[ \t]*+\n|<\|start_header_id\|>\w*<\|end_header_id\|>"
)

# One linear pass finds the boxes: `\\` (a LaTeX row break) and `\{` `\}` (literal braces) are
# skipped, `{` `}` count nesting, `\boxed{` / `\fbox{` open a box and `\boxed 5` is a bare box.
_BOX_TOKEN = re.compile(r"\\\\|\\[{}]|\\(?:boxed|fbox)\s*\{|\\boxed[ \t]+(?=[^\s{])|[{}]")
_BARE_BOX_VALUE = re.compile(r"[^\s$]+")
# What may sit between two boxes that list the parts of one answer: spaces, commas, semicolons,
# `&`, math delimiters, LaTeX spacing and "and". Any other word (e.g. "Wait, actually") separates.
_BOX_GAP = re.compile(
    r"(?:\s|[,;&$]|\\[()\[\]]|\\q?quad|\\[,;:! ]|\\text\{\s*+(?:and|,)?\s*+\}|\band\b)*+"
)
_MAX_BOX_GAP = 200  # boxes further apart than this are separate answers
_MAX_JOINED_BOXES = 20  # a find-all answer lists a few parts, not hundreds
_MAX_SCAN_CHARS = 100_000  # only the end of a completion (~25k tokens) is read for its answer
# `#### 18` alone on its line; a markdown heading like `#### Step 1: ...` is not an answer.
_GSM8K_ANSWER = re.compile(r"^[ \t]*+####[ \t]*+(\S++)[ \t]*+$", re.MULTILINE)
# Possessive quantifiers (*+, ++) keep these regexes linear on adversarial text (2 MB of spaces).
_ANSWER_PHRASE = re.compile(
    r"(?:the\s++)?(?:final\s++)?answer\s*+(?:\*\*)?\s*+(?:is\b\s*+:?|:)[ \t]*+", re.IGNORECASE
)
_DELIMITED = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]|\*\*(.+?)\*\*", re.DOTALL)
_CHOICE = re.compile(r"\(?[A-Ea-e]\)?")


def after_thinking(text: str) -> str:
    """The visible answer of a reasoning model: the text after the LAST `</think>`. The thinking
    is scratch work (it tries values, boxes drafts), so it is never read for the answer. A text
    that opens `<think>` and never closes it is all thinking: "" (no answer). A text without
    think tags is returned as it is. (Qwen3 with enable_thinking writes `<think>` itself; some
    templates put it in the prompt, so a completion may hold only `</think>`.)"""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>"):]
    return "" if "<think>" in text else text


def _answer_turn(text: str) -> str:
    """The end of the model's answer turn: the first stretch of text between end-of-turn tokens
    that has content, with a leading role name ("assistant\\n") removed and any thinking before
    `</think>` dropped (`after_thinking`), cut to its last _MAX_SCAN_CHARS characters (what is
    read for the answer; keeps the cost of 2 MB inputs low)."""
    for part in _END_OF_TURN.split(text):
        part = _ROLE_HEADER.sub("", part)
        if part.strip():
            return after_thinking(part)[-_MAX_SCAN_CHARS:]
    return ""


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
    """All outermost boxes as (start, end, content), in order. content is None for a box that is
    never closed (a completion cut off inside its answer)."""
    found: list[tuple[int, int, str | None]] = []
    depth = 0
    box_start, box_depth, content_start = -1, -1, -1  # the open outermost box, if any
    for m in _BOX_TOKEN.finditer(text):
        tok = m.group()
        if tok in ("\\\\", "\\{", "\\}"):
            continue
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth = max(depth - 1, 0)  # a stray `}` (or one whose `{` is before the window)
            if box_start >= 0 and depth == box_depth:
                found.append((box_start, m.end(), text[content_start : m.start()]))
                box_start = -1
        elif tok.endswith("{"):  # \boxed{ or \fbox{
            if box_start < 0:
                box_start, box_depth, content_start = m.start(), depth, m.end()
            depth += 1
        elif box_start < 0:  # \boxed 5, outside any other box
            value = _BARE_BOX_VALUE.match(text, m.end())
            found.append((m.start(), value.end(), value.group()))
    if box_start >= 0:
        found.append((box_start, len(text), None))
    return found


def _tidy(answer: str, punctuation: str = "") -> str | None:
    """Strip spaces and trailing `punctuation`; "" becomes None. Box contents keep theirs
    (`\\boxed{5!}` is 120); an answer read from prose drops the sentence's full stop."""
    answer = answer.strip().rstrip(punctuation).strip()
    return answer or None


def final_boxes(text: str) -> list[str]:
    """The contents of the boxes that end the answer: the last non-empty box, preceded by the
    boxes joined to it only by commas, "and", spaces or math delimiters (`\\boxed{1}, \\boxed{2}`).
    Empty boxes (`\\boxed{}`, e.g. the prompt's instruction echoed back) are skipped. [] when the
    last box is never closed or there is no box."""
    turn = _answer_turn(text)
    boxes = [b for b in _boxes(turn) if b[2] is None or b[2].strip()]
    if not boxes or boxes[-1][2] is None:
        return []
    run = [boxes[-1]]  # built backwards from the last box
    for prev in reversed(boxes[-_MAX_JOINED_BOXES:-1]):
        gap = turn[prev[1] : run[-1][0]]
        if prev[2] is None or len(gap) > _MAX_BOX_GAP or not _BOX_GAP.fullmatch(gap):
            break
        run.append(prev)
    return [a for a in (_tidy(b[2]) for b in reversed(run)) if a is not None]


EXTRACTIONS = ("strict", "eval")
# Eval only: a bold "**Final Answer**" heading with the answer on the next line, and "the final
# answer to the question is X" (up to 100 characters between "answer" and "is", as Math-Verify).
_EVAL_ANSWER_PHRASE = re.compile(
    _ANSWER_PHRASE.pattern + r"|final\s++answer\s*+(?:\*\*)?[ \t]*+\n\s*+"
    r"|(?:the\s++)?final\s++answer\b[^.\n$\\]{1,100}?\b(?:is|=)\s*+:?[ \t]*+",
    re.IGNORECASE,
)
# Where an answer stated in words ends: a line break, a full stop, "I hope it is correct", a clause.
_CLAUSE_END = re.compile(r"\n|\.(?=\s|$)|;\s|\s(?:I\s+hope|because|since|which|as\s+(?:it|this))\b", re.IGNORECASE)
# In "the total number of apples is 18", the answer is what follows the last of these.
_RESULT_WORD = re.compile(r"(?:\b(?:is|are|equals|be|of)\b\s*+:?|=)\s*+")


def _check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction={extraction!r}: accepted {' | '.join(EXTRACTIONS)}")


def _math_answer(value: str) -> str | None:
    """An answer read from prose, if it looks like one: it holds a digit or a backslash, or is a
    choice letter like `(C)`. A plain word ("not", "yes", "clear") is never an answer."""
    value = _tidy(re.sub(r"(?<!\\)\$", "", value).replace("\\(", "").replace("\\)", ""), ".,;:!")
    if value and (re.search(r"[\d\\]", value) or _CHOICE.fullmatch(value)):
        return value
    return None


def _stated_answer(text: str, phrase: re.Match, extraction: str) -> str | None:
    """The answer stated right after an answer phrase ("the answer is", "Final Answer:").

    strict: a math span (`$...$`, `\\(...\\)`, `\\[...\\]`, bold `**X**`) or one token.
    eval: also an answer written over several tokens (`3 \\sqrt{2}`, `x + 1`), and the value
    after the last "is" / "=" of a sentence ("Final Answer: The total number of apples is 18.");
    a number followed by words keeps the number ("18 apples", "\\$18 per day")."""
    rest = text[phrase.end() : phrase.end() + 2 * MAX_ANSWER_CHARS]
    if text.endswith("**", 0, phrase.start()) and rest.startswith("**"):
        rest = rest[2:].lstrip(" \t")  # the bold label's closing `**`, as in "**Final Answer:** 73"
    delimited = _DELIMITED.match(rest)
    if delimited:
        value = next(g for g in delimited.groups() if g is not None)
        return _tidy(value.replace("$", "").replace("\\(", "").replace("\\)", ""), ".,;:")
    if extraction == "strict":
        token = _tidy(rest.split(maxsplit=1)[0], ".,;:!") if rest.strip() else None
        return token if token and (re.search(r"[\d\\]", token) or _CHOICE.fullmatch(token)) else None
    clause = _CLAUSE_END.split(rest, maxsplit=1)[0].strip()
    if re.match(r"(?:not|no|unknown|undefined)\b|\\f?box", clause, re.IGNORECASE):
        return None  # "the answer is not 5"; "the answer is \box" (cut off, not a box _boxes reads)
    results = list(_RESULT_WORD.finditer(clause))
    if results and re.match(r"[A-Za-z]{2}", clause):  # a sentence: "the total ... is 18"
        after = _math_answer(clause[results[-1].end() :])
        clause = clause[results[-1].end() :] if after else clause
    tokens = clause.split()
    if tokens and _number(_clean(tokens[0].rstrip(".,;:!"))) is not None \
            and not re.search(r"[\d\\=+*/^]", " ".join(tokens[1:])):
        return _math_answer(tokens[0])  # a number and its unit words
    return _math_answer(clause)


def _last_statement(text: str, extraction: str, after: int = 0) -> str | None:
    """The answer of the last answer phrase at or after position `after` that states one."""
    phrases = [m for m in (_EVAL_ANSWER_PHRASE if extraction == "eval" else _ANSWER_PHRASE).finditer(text)
               if m.start() >= after]
    if extraction == "strict":  # only the last phrase counts: "the answer is not 5" ends it
        return _stated_answer(text, phrases[-1], extraction) if phrases else None
    for phrase in reversed(phrases[-_MAX_JOINED_BOXES:]):  # the last 20 phrases: bounded time
        answer = _stated_answer(text, phrase, extraction)
        if answer is not None:
            return answer
    return None


def answer_turn(text: str) -> str:
    """The part of a completion that is read for its answer: the model's answer turn, cut at its
    first end-of-turn token (see `extract_answer`)."""
    return _answer_turn(text)


# Boxes offered as alternatives: `\boxed{18} or \boxed{19}`, `$\boxed{18}$, or perhaps $\boxed{19}$`.
_ALTERNATIVE_GAP = re.compile(
    r"(?:\s|[,;/$]|\\[()\[\]]|\\q?quad|\\[,;:! ]|\\text\{\s*+or\s*+\}|\b(?:maybe|perhaps|possibly|either)\b)*+"
    r"\bor\b(?:\s|[,;/$]|\\[()\[\]]|\b(?:maybe|perhaps|possibly|even)\b)*+",
    re.IGNORECASE,
)


def box_gap(gap: str) -> str:
    """What the text between two boxes makes of them: "list" (commas, "and", spaces, `$`: parts
    of one answer, `\\boxed{1}, \\boxed{2}`), "alternatives" (an "or": `\\boxed{18} or \\boxed{19}`),
    or "" (any other text: separate answers, e.g. a revision)."""
    if len(gap) <= _MAX_BOX_GAP and _BOX_GAP.fullmatch(gap):
        return "list"
    if len(gap) <= _MAX_BOX_GAP and _ALTERNATIVE_GAP.fullmatch(gap):
        return "alternatives"
    return ""


def boxes_of(text: str) -> list[tuple[int, int, str]]:
    """The closed, non-empty boxes of the answer turn (`answer_turn(text)`), in order, as
    (start, end, content) with positions in the answer turn (end just past the closing brace)."""
    return [(b[0], b[1], a) for b in _boxes(_answer_turn(text)) if b[2] is not None for a in [_tidy(b[2])] if a]


def answer_statements(text: str) -> list[tuple[int, str]]:
    """Every answer the answer turn (`answer_turn(text)`) states, in order, as (start, answer)
    with start a position in the answer turn: each closed, non-empty box, and each explicit answer
    statement ("the answer is 18", "Final Answer: 18", `#### 18`) read as `extract_answer` reads
    one (strict). Used by rewards' negative rules: a negative must not state the gold anywhere."""
    turn = _answer_turn(text)
    found = [(start, answer) for start, _, answer in boxes_of(text)]
    for m in _GSM8K_ANSWER.finditer(turn):
        answer = _tidy(m.group(1), ".,;:")
        if answer:
            found.append((m.start(), answer))
    for phrase in _ANSWER_PHRASE.finditer(turn):
        answer = _stated_answer(turn, phrase, "strict")
        if answer is not None and not answer.startswith(("\\boxed", "\\fbox")):  # a box is listed already
            found.append((phrase.start(), answer))
    return sorted(found)


def extract_answer(text: str, *, extraction: str = "strict") -> str | None:
    """The final answer of a completion, as a string, or None when there is none.

    extraction="strict" (the default; the generator's reward and synthesis), in order of precedence:
    1. the content of the LAST `\\boxed{...}` (braces nest; `\\fbox{}` and a bare `\\boxed 5` too);
    2. else the last GSM8K-style `#### N`;
    3. else the last explicit "the (final) answer is X", "Final Answer: X" or "Answer: X", where X
       is `$...$`, `\\(...\\)`, `\\[...\\]`, bold `**X**`, or a single token that holds a digit or a
       backslash or is a choice letter like `(C)`.
    extraction="eval" (evaluate.py), as the Qwen2.5-Math harness and Math-Verify read answers:
    an explicit final-answer statement AFTER the last box wins over that box (the box was an
    intermediate step); statements are read over several tokens and from sentences
    ("Final Answer: The total is 18."), also after a "**Final Answer**" heading; otherwise as strict.
    Only the answer turn is read: the text is cut at its first end-of-turn token (`<|im_end|>`,
    `<|endoftext|>`, `</s>`...).

    NOT extracted, on purpose, in either mode:
    * a last bare number or expression with no box and no answer phrase: a guess lying in the
      text must not count as an answer (a negative generator would learn to leave one);
    * an unclosed last box (`\\boxed{12` at the end of a truncated completion): the answer was cut
      off, so there is none, and an earlier box is not taken in its place (it may be a step the
      model revised);
    * empty boxes; a plain word after "the answer is" (`the answer is not 5`, `the answer is yes`),
      which would otherwise parse as a product of letters.
    """
    _check_extraction(extraction)
    text = _answer_turn(text)
    boxes = [b for b in _boxes(text) if b[2] is None or b[2].strip()]
    if boxes and extraction == "eval" and boxes[-1][2] is not None:
        later = _last_statement(text, extraction, after=boxes[-1][1])
        if later is not None:
            return later
    if boxes:
        return None if boxes[-1][2] is None else _tidy(boxes[-1][2])
    gsm8k = _GSM8K_ANSWER.findall(text)
    if gsm8k:
        return _tidy(gsm8k[-1], ".,;:")
    return _last_statement(text, extraction)


# =============================================================================================
# Normalisation and the pure-Python fast path
# =============================================================================================
_UNSAFE = re.compile(
    r"__|`|\"|\b(?:import|lambda|eval|exec|compile|getattr|setattr|globals|locals|subprocess)\b"
    r"|\bos\s*\.|\bsys\s*\.|\bopen\s*\("
)
# Well-formed but ruinous for sympy (minutes, gigabytes): a numeric power tower of height 3+
# (9^{9^{9}}, 10**10**10) or an exponent of 5+ digits. Refused up front, so that a generator that
# learns to emit them cannot stall training for WORKER_TIMEOUT_S plus a worker restart each time.
# Likewise a factorial of a number of 5+ digits (`99999999999!`: 10^12 digits) or of a factorial
# (`(10!)!`). An expensive answer no cheap rule recognises ((10^7)!) still meets the worker timeout.
_TOO_BIG = re.compile(
    r"\d\s*(?:\^|\*\*)\s*\{?\s*\d+\s*(?:\^|\*\*)\s*\{?\s*\d|(?:\^|\*\*)\s*\{?\s*[+-]?\d{5}"
    r"|\d{5}\s*+(?:\\right\s*+)?[)}\]]*+\s*+!|!\s*+(?:\\right\s*+)?[)}\]]++\s*+!"
)
_MAX_NESTING = 20  # brace/bracket depth; real answers stay under ~6
_TEXT_UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm|textrm|rm)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm|textrm)\s*\{([^{}]*)\}")
_WORD_UNIT = re.compile(r"([+-]?[\d.,/]+)\s+[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)?")
_MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "mod", "and", "or"}
# Plain words ("five", "cat", "Sunday"). Math-Verify reads a word as a product of letters
# (f*i*v*e), so a word against a gold that is not a word is not an answer it can judge.
_WORDS = re.compile(r"(?=.*[A-Za-z]{3})[A-Za-z ]+")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNMENT = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)", re.DOTALL)


def _clean(s: str) -> str:
    """Remove what never changes an answer's value: math delimiters, `\\left`/`\\right`, spacing,
    `\\$`, percent and degree signs, a trailing unit (`\\text{ cm}`, `\\mbox{ inches}^2`,
    `10 dollars`), thousands separators, an enclosing `\\boxed{}` and trailing punctuation."""
    s = s.strip()
    while s.startswith(("\\boxed{", "\\fbox{")) and s.endswith("}"):
        s = s[s.index("{") + 1 : -1].strip()
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left\s*\.|\\right\s*\.", "", s)
    s = re.sub(r"\\(?:left|right|bigg|big|Bigg|Big)(?![a-zA-Z])", "", s)
    s = s.replace("\\$", "").replace("$", "")
    # (?<!\\) keeps a matrix row break `\\` intact: `\\ 0` is not the spacing command `\ `.
    s = re.sub(r"(?<!\\)\\[()\[\]]", "", s)
    s = re.sub(r",\\!\s*", ",", s)
    s = re.sub(r"(?<!\\)\\!", "", s)
    s = re.sub(r"(?<!\\)\\[,;: ]|~", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = re.sub(r"\\?%", "", s)
    s = s.strip().rstrip(".").strip()
    unit = _TEXT_UNIT.search(s)
    if unit and unit.start() > 0 and re.search(r"\d", s[: unit.start()]):
        s = s[: unit.start()].rstrip()
    word_unit = _WORD_UNIT.fullmatch(s)
    if word_unit and not set(s[word_unit.end(1) :].lower().replace(".", " ").split()) & _MATH_WORDS:
        s = word_unit.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    whole_text = _TEXT_WRAP.fullmatch(s)
    if whole_text:
        s = whole_text.group(1).strip()
    return re.sub(r"\s+", " ", s).strip()


def _canonical(s: str) -> str:
    """A cleaned answer with every `\\text{}` unwrapped and all spaces removed, for string equality.
    A choice letter `(C)` becomes `C`."""
    s = re.sub(r"\s+", "", _TEXT_WRAP.sub(r"\1", s))
    return s.strip("()").upper() if _CHOICE.fullmatch(s) else s


# A number the fast path reads exactly: (value, is_decimal). Decimals are the only approximations.
_Number = tuple[Fraction, bool]
_INT = r"[+-]?\d+"
_DECIMAL = r"[+-]?(?:\d+\.\d*|\.\d+)"
_SCIENTIFIC = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\s*\\(?:times|cdot)\s*10\s*\^)\s*\{?([+-]?\d{1,3})\}?"
)
_FRAC = re.compile(r"([+-]?)\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_SLASH = re.compile(rf"({_INT})\s*/\s*({_INT})")


def _number(s: str) -> _Number | None:
    """Read a plain number: integer (leading zeros allowed), decimal, scientific notation
    (`5.47e5`, `2.78\\times 10^{-6}`; exponent at most 3 digits), `a/b` or `\\frac{a}{b}` / `\\frac12`
    with integer parts. Anything else is None (left to Math-Verify)."""
    s = s.strip()
    if re.fullmatch(_INT, s):
        return Fraction(int(s)), False
    if re.fullmatch(_DECIMAL, s):
        return Fraction(s), True
    m = _SCIENTIFIC.fullmatch(s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), True
    m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
    if m:
        if m.re is _SLASH:
            num, den = int(m.group(1)), int(m.group(2))
        else:
            num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
            num = -num if m.group(1) == "-" else num
        return (Fraction(num, den), False) if den != 0 else None
    return None


def _split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _numbers(s: str) -> tuple[str, list[_Number]] | None:
    """Read a number or a flat collection of numbers as (kind, values). kind is "number", "set"
    (a bare list `1, -2` or braces `\\{1, -2\\}`: order does not matter) or the bracket pair of an
    ordered one ("()", "[)", "[]"...: a tuple or an interval). A leading `x =` is dropped."""
    assignment = _ASSIGNMENT.fullmatch(s)
    if assignment:
        s = assignment.group(1).strip()
    single = _number(s)
    if single is not None:
        return "number", [single]
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, inner = "set", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        kind, inner = s[0] + s[-1], s[1:-1]
        if any(ch in inner for ch in "()[]{}"):
            return None
    elif "," in s:
        kind, inner = "set", s
    else:
        return None
    values = [_number(part) for part in _split_top_level(inner)]
    if len(values) < 2 or any(v is None for v in values):
        return None
    return kind, values  # type: ignore[return-value]


def _terminates(x: Fraction) -> bool:
    """Whether x has a finite decimal expansion (its denominator is 2^a 5^b)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _same_number(a: _Number, b: _Number) -> bool:
    """Equal values; or one side a decimal within REL_TOL of the other's exact value when that
    value has no finite decimal expansion (`0.333333` ~ `1/3`; `0.1500001` is not ~ `3/20`)."""
    if a[0] == b[0]:
        return True
    for approx, exact in ((a, b), (b, a)):
        if approx[1] and not exact[1] and not _terminates(exact[0]):
            return abs(approx[0] - exact[0]) <= REL_TOL * abs(exact[0])
    return False


def _fast_compare(answer: str, gold: str) -> Verdict | None:
    """Decide from numbers alone, or None to leave it to Math-Verify. Both sides must read as
    numbers (`_numbers`). Sets compare as sorted lists of their distinct values; ordered
    collections element by element with the same brackets (`[2,5)` != `[2,5]`)."""
    a, g = _numbers(answer), _numbers(gold)
    if a is None or g is None:
        return None
    (a_kind, a_vals), (g_kind, g_vals) = _distinct(*a), _distinct(*g)
    if a_kind != g_kind:
        if "number" in (a_kind, g_kind):
            return "wrong"  # one number against two or more
        # A set and `(1,2)` (a tuple or an open interval) can still be equal under Math-Verify's
        # rules; intervals with different closed ends (`[2,5)`, `[2,5]`) cannot.
        return None if {a_kind, g_kind} & {"set", "()"} else "wrong"
    if len(a_vals) != len(g_vals):
        return "wrong"
    return "correct" if all(_same_number(x, y) for x, y in zip(a_vals, g_vals)) else "wrong"


def _distinct(kind: str, values: list[_Number]) -> tuple[str, list[_Number]]:
    """A set's distinct values in increasing order (one value left: a number); others as they are."""
    if kind != "set":
        return kind, values
    values = sorted({v[0]: v for v in values}.values())
    return ("number" if len(values) == 1 else "set"), values


# =============================================================================================
# The Math-Verify worker process
# =============================================================================================
def _mv_compare(answer: str, gold: str) -> tuple[Verdict, str]:
    """(runs in the worker) Parse both with Math-Verify's LaTeX parser and compare them.

    Math-Verify's own float check rounds to a number of decimal PLACES (6 by default: it calls
    6.72e-5 equal to 6.73e-5), so it is given 12 places here and the relative REL_TOL check
    below handles approximations of irrational values (`6.283185` ~ `2\\pi`)."""
    from math_verify import LatexExtractionConfig, parse, verify

    def latex(s: str) -> list:
        # Wrapped in $...$: an undelimited `\dfrac{9}{7}` or `\sqrt{17}` would parse to nothing.
        # Timeouts off: Math-Verify's use signal.alarm (main thread only); the parent bounds time.
        return parse(f"${s}$", [LatexExtractionConfig()], fallback_mode="no_fallback",
                     parsing_timeout=None, raise_on_error=True)

    gold_parsed = latex(gold)
    if not gold_parsed:
        return "unparseable", "gold_not_parsed"
    answer_parsed = latex(answer)
    if not answer_parsed:
        return "unparseable", "answer_not_parsed"
    if verify(gold_parsed, answer_parsed, float_rounding=12, timeout_seconds=None, raise_on_error=True):
        return "correct", "math_verify"
    if _approx_equal(gold_parsed[0], answer_parsed[0]):
        return "correct", "tolerance"
    return "wrong", "math_verify"


def _approx_equal(x, y) -> bool:
    """(runs in the worker) One side a decimal (sympy Float), the other an exact real number with
    no finite decimal expansion, within REL_TOL of it."""
    import sympy

    for approx, exact in ((x, y), (y, x)):
        if not isinstance(approx, sympy.Float) or not isinstance(exact, sympy.Expr):
            continue
        if not exact.is_number or exact.has(sympy.Float):
            continue
        if exact.is_Rational and _terminates(Fraction(int(exact.p), int(exact.q))):
            continue
        value = sympy.N(exact, 30)
        if not value.is_real or not value.is_finite:
            continue
        tol = sympy.Rational(REL_TOL.numerator, REL_TOL.denominator)
        return bool(abs(sympy.N(approx, 30) - value) <= tol * abs(value))
    return False


def _worker_main() -> None:
    """(the worker process) Read one JSON request per line from stdin, write one JSON verdict per
    line. Exits when stdin closes (the parent is gone)."""
    import logging
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    # Math-Verify warns that its timeouts are disabled: on purpose, the parent kills us instead.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    reply = os.fdopen(os.dup(1), "w")  # the protocol channel; stray prints go to stderr instead
    os.dup2(2, 1)
    _mv_compare("(x+1)^2", "x^2+2x+1")  # load sympy's lazy parts now, not in the first request
    reply.write("ready\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            verdict, how = _mv_compare(request["answer"], request["gold"])
        except Exception as e:  # noqa: BLE001 - sympy raises anything on odd input; reported by type
            verdict, how = "unparseable", f"error:{type(e).__name__}"
        reply.write(json.dumps({"verdict": verdict, "how": how}) + "\n")
        reply.flush()


class _Worker:
    """One worker process and its pipes. Not thread-safe: used under _WORKER_LOCK."""

    def __init__(self) -> None:
        _count("worker_starts")
        self.owner_pid = os.getpid()  # a forked child must start its own worker, not share this one
        self.proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        self.buffer = b""
        self.ready = False

    def read_line(self, timeout_s: float) -> bytes | None:
        """The next line from the worker, or None after timeout_s. EOFError if the worker died."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EOFError("grading worker exited")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            line = self.read_line(WORKER_START_TIMEOUT_S)
        except EOFError:
            line = b""
        if line != b"ready":
            self.kill()
            raise RuntimeError(
                f"the grading worker ({sys.executable} {__file__} --worker) did not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s (got {line!r}); its traceback, if any, is on stderr. "
                "Is math-verify installed in this interpreter?"
            )
        self.ready = True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _current_worker() -> _Worker:
    """The live worker of this process, started (or restarted, if it died while idle) as needed."""
    global _WORKER
    if _WORKER is not None and _WORKER.owner_pid == os.getpid() and _WORKER.proc.poll() is not None:
        _count("worker_crashes")
        _WORKER.kill()
        _WORKER = None
    if _WORKER is None or _WORKER.owner_pid != os.getpid():
        _WORKER = _Worker()
    return _WORKER


def warm_up() -> None:
    """Start the Math-Verify worker now and wait until it is ready (1-3 s), so that the first
    grading call is not slowed by it. Optional: grading starts it when first needed."""
    with _WORKER_LOCK:
        _current_worker().wait_ready()


def shutdown_worker() -> None:
    """Stop the worker (also done at exit). The next comparison that needs it starts a new one."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is not None and _WORKER.owner_pid == os.getpid():
            _WORKER.kill()
        _WORKER = None


atexit.register(shutdown_worker)


def _ask_worker(answer: str, gold: str) -> tuple[Verdict, str]:
    """Compare in the worker, waiting at most WORKER_TIMEOUT_S once it is ready. On a timeout or a
    crash the worker is killed and a fresh one started right away (it warms up while we return)."""
    global _WORKER
    with _WORKER_LOCK:
        worker = _current_worker()
        worker.wait_ready()
        _count("worker_calls")
        try:
            worker.proc.stdin.write((json.dumps({"answer": answer, "gold": gold}) + "\n").encode())
            line = worker.read_line(WORKER_TIMEOUT_S)
        except (EOFError, BrokenPipeError):
            _count("worker_crashes")
            worker.kill()
            _WORKER = _Worker()
            return "unparseable", "worker_crash"
        if line is None:
            _count("worker_timeouts")
            worker.kill()
            _WORKER = _Worker()
            return "unparseable", "timeout"
    reply = json.loads(line)
    _count(f"worker:{reply['how']}")
    return reply["verdict"], reply["how"]


# =============================================================================================
# Grading
# =============================================================================================
_CACHE: collections.OrderedDict[tuple[str, str], tuple[Verdict, str]] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def _nesting(s: str) -> int:
    """The deepest nesting of (), [] and {} in s."""
    depth = deepest = 0
    for ch in s:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _compare(answer: str, gold: str) -> tuple[Verdict, str]:
    """(verdict, how) for an extracted answer against a gold answer, uncached."""
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        _count("too_long")
        return "unparseable", "too_long"
    if _UNSAFE.search(answer):
        _count("unsafe")
        return "unparseable", "unsafe"
    if _TOO_BIG.search(answer) or _nesting(answer) > _MAX_NESTING:
        _count("too_big")
        return "unparseable", "too_big"
    answer, gold = _clean(answer), _clean(gold)
    if not answer:
        return "no_answer", "empty"
    if _canonical(answer) == _canonical(gold):
        _count("fast_string")
        return "correct", "string"
    fast = _fast_compare(answer, gold)
    if fast is not None:
        _count("fast_number")
        return fast, "number"
    answer_text, gold_text = _TEXT_WRAP.sub(r"\1", answer), _TEXT_WRAP.sub(r"\1", gold)
    if _WORDS.fullmatch(answer_text) and not _WORDS.fullmatch(gold_text):
        _count("words")
        return "unparseable", "words"
    return _ask_worker(answer, gold)


def grade_answer(answer: str, gold: str) -> Grade:
    """Grade an already extracted answer against a gold answer (see the module docstring for
    what counts as equal). gold may be LaTeX, wrapped in `$...$` or not, `\\$18`, `27.0`...
    Results are cached per (answer, gold)."""
    if not isinstance(answer, str) or not isinstance(gold, str):
        raise TypeError(f"answer and gold must be str, got {type(answer).__name__} and {type(gold).__name__}")
    if not gold.strip():
        raise ValueError("the gold answer is empty; check the benchmark loader")
    key = (answer, gold)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            _count("cache_hits")
    if hit is None:
        hit = _compare(answer, gold)
        with _CACHE_LOCK:
            _CACHE[key] = hit
            if len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return Grade(hit[0], answer, hit[1])


def grade(pred_text: str, gold: str, *, extraction: str = "strict") -> Grade:
    """Grade a full model completion against a gold answer.

    The final answer (`extract_answer(pred_text, extraction=...)`) is compared first; if it is
    not correct and the completion ends with several boxes joined by commas/"and"
    (`\\boxed{1}, \\boxed{2}`), they are compared again as one list. With extraction="eval" an
    answer split over several boxes for several parts ("(a) ... \\boxed{5}. (b) ... \\boxed{7}")
    is also compared: the last n boxes joined, n the number of parts of the gold (`5, 7`: 2).
    The verdict is "correct" if any comparison is, "no_answer" if nothing was extracted,
    "wrong" only if every comparison made said wrong, else "unparseable"."""
    if not isinstance(pred_text, str):
        raise TypeError(f"pred_text must be str, got {type(pred_text).__name__}")
    answer = extract_answer(pred_text, extraction=extraction)
    if answer is None:
        return Grade("no_answer", None, "not_extracted")
    result = grade_answer(answer, gold)
    if result.verdict == "correct":
        return result
    joined = []
    boxes = final_boxes(pred_text)
    if len(boxes) >= 2 and boxes[-1] == answer:
        joined.append(", ".join(boxes))
    if extraction == "eval":
        parts = len(_gold_parts(gold))
        every = boxes_of(pred_text)[-parts:]
        turn = _answer_turn(pred_text)
        alternatives = any(box_gap(turn[a[1] : b[0]]) == "alternatives" for a, b in zip(every, every[1:]))
        if 2 <= parts <= _MAX_JOINED_BOXES and len(every) == parts and every[-1][2] == answer and not alternatives:
            joined.append(", ".join(b[2] for b in every))  # not `\boxed{1} or \boxed{2}`: alternatives
    for candidate in dict.fromkeys(joined):
        other = grade_answer(candidate, gold)
        if other.verdict == "correct":
            return other
        if result.verdict == "wrong" and other.verdict != "wrong":
            result = other  # "wrong" needs every comparison to say so
    return result


def _gold_parts(gold: str) -> list[str]:
    """The parts of a gold answer listed with commas: `5, 7` and `\\{1, 2\\}` have 2, `18` and
    `(3, \\frac{\\pi}{2})` (a tuple, written in one box) 1."""
    s = _clean(gold)
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]
    return [part for part in _split_top_level(s) if part.strip()]


def is_correct(pred_text: str, gold: str, *, extraction: str = "strict") -> bool:
    """Whether the completion's final answer is equivalent to gold (see `grade`)."""
    return grade(pred_text, gold, extraction=extraction).verdict == "correct"


def is_confidently_wrong(pred_text: str, gold: str, *, extraction: str = "strict") -> bool:
    """Whether an answer was extracted and parsed and is not equivalent to gold under every check.
    No answer, an answer too long or refused, a parse failure or a timeout are all False: a
    negative sample must be a real wrong answer, never a format failure. (Whether a wrong
    completion is a NEGATIVE, one final answer reached by its own reasoning, is decided by
    rewards.negative_check on top of this verdict.)"""
    return grade(pred_text, gold, extraction=extraction).verdict == "wrong"


# =============================================================================================
# Answer shapes, for the negative rules of pns_mini.rewards
# =============================================================================================
# What may stand in a single number besides digits: fractions, roots, pi, products, functions.
_NUMERIC_COMMANDS = re.compile(
    r"\\(?:frac|sqrt|pi|cdot|times|div|binom|log|ln|exp|sin|cos|tan|cot|sec|csc)(?![A-Za-z])"
)
# Alternatives inside one answer: "18 or 19", `18 \text{ or } 19`, `18 \lor 19`, `18 \pm 1`.
_ALTERNATIVE = re.compile(r"\b(?:or|and)\b|\\(?:lor|vee|pm|mp)(?![A-Za-z])|;")


def is_numeric(answer: str) -> bool:
    """Whether `answer` is ONE number, written plainly or as an expression of numbers: `18`,
    `\\$18`, `18 \\text{ apples}`, `-\\frac{3}{4}`, `2\\sqrt{3}`, `3\\pi`, `5!`, `10^{6}`, `x = 18`,
    `\\binom{5}{2}`, `\\log_2 8`. Not: a symbol or expression with a variable (`x`, `ab`, `2x`), a
    word (`five`), a list (`18, 19`), alternatives (`18 \\text{ or } 19`), a tuple, an interval,
    `\\infty`, or nothing."""
    s = _clean(answer)
    assignment = _ASSIGNMENT.fullmatch(s)
    if assignment:
        s = assignment.group(1).strip()
    if _number(s) is not None:
        return True
    if "," in s or _ALTERNATIVE.search(_TEXT_WRAP.sub(r" \1 ", s)):
        return False
    rest = _SCIENTIFIC.sub("1", _NUMERIC_COMMANDS.sub(" ", s))
    return bool(re.search(r"\d|\\pi", s)) and not re.search(r"[A-Za-z\\]", rest)


def answer_values(answer: str) -> int:
    """How many values an answer offers: 1 for `18` or `(3, 4)` (one tuple), 2 for `18, 19`,
    `\\{18, 19\\}`, `18 \\text{ or } 19`, `18 \\pm 1`, `x = 18 \\text{ and } x = 19`. 0 for none."""
    s = _TEXT_WRAP.sub(r" \1 ", _clean(answer))
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]
    parts = [p for p in _split_top_level(s) if p.strip()]
    return sum(1 + len(_ALTERNATIVE.findall(p)) for p in parts)


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        sys.exit("usage: python pns_mini/grading.py --worker  (started by pns_mini.grading itself)")
    _worker_main()
