"""Answer extraction and equivalence: is a model's final answer the gold answer?

Model text is untrusted input, so grading is deterministic, bounded and safe. `extract_answer`
reads the final answer (never a last bare number: a negative generator must not score with a guess
lying around); `find_boxes` is the package's one `\\boxed{}` scanner. `grade_answer` refuses long,
code-looking, huge and deeply nested answers up front, then compares cheapest first: normalised
strings; numbers, sets and tuples of numbers with `fractions.Fraction` (no sympy); Math-Verify's
LaTeX parser (never `parse_expr`, i.e. `eval`) in a worker process killed past `WORKER_TIMEOUT_S`.
Every failure is "unparseable" and counted in `STATS`, never "wrong": "wrong" needs an answer that
every check compared unequal.

Equivalence choices (each one is a row of tests/test_grading.py):

* A percent sign is a unit like `\\text{ cm}`: `50\\%` = `50`, `0.5` != `50\\%` (no x100 leniency).
* `18.0` = `18` and `0.5` = `1/2` exactly. A decimal approximates only a value with no finite
  decimal expansion, within a relative 1e-6 (`6.283185` = `2\\pi`, `0.333` != `1/3`,
  `1000000.4` != `1000000`), and only as a single number, not inside tuples or sets.
* `1,000` is one thousand. Boxes listed together (`\\boxed{1}, \\boxed{2}`) are one list (gold
  `\\{1, 2\\}`); boxes with other text between are not: a revised solution's last box counts.
* From Math-Verify: letters compare case-insensitively, a base subscript is dropped
  (`2516_8` = `2516`), `x = 5` = `5`, `(1,2)` = `\\{1,2\\}`. `5.47e5` is 547000.
* A plain word (`five`) against a gold that is not one (`5`) is "unparseable": Math-Verify would
  read f*i*v*e, and a negative generator must not earn "wrong" by boxing words.

Time: the worker compares in tens of milliseconds; a cold start (1-3 s) happens once per process
and after each timeout (`warm_up()` does it ahead of time). Threads take turns on the one worker.
POSIX only (the worker pipe is read with `select`).
"""
from __future__ import annotations

import atexit
import collections
import functools
import itertools
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

# What decided each comparison and every failure (never swallowed silently): "fast_string",
# "fast_number", "too_long", "unsafe", "too_big", "words", "worker_starts", "worker_calls",
# "worker_timeouts", "worker_crashes", and "worker:<how>" per reply ("worker:math_verify"...).
STATS: collections.Counter = collections.Counter()
_STATS_LOCK = threading.Lock()


def _count(key: str) -> None:
    with _STATS_LOCK:
        STATS[key] += 1


@dataclass(frozen=True)
class Grade:
    """verdict: "correct" | "wrong" | "no_answer" | "unparseable". answer: the answer that was
    compared (boxes joined with ", " when the joined list decided), None if none was extracted.
    how: what decided: "string", "number", "math_verify", "tolerance", "timeout", "too_long",
    "unsafe", "too_big", "words", "answer_not_parsed", "error:RecursionError", "not_extracted"..."""

    verdict: Verdict
    answer: str | None
    how: str


# =============================================================================================
# Boxes: one linear scan; every reader of `\boxed{}` goes through `find_boxes`
# =============================================================================================
# `\\` (a LaTeX row break) and `\{` `\}` (literal braces) are skipped, `{` `}` count nesting,
# `\boxed{` / `\fbox{` open a box and `\boxed 5` is a bare box.
_BOX_TOKEN = re.compile(r"\\\\|\\[{}]|\\(?:boxed|fbox)\s*\{|\\boxed[ \t]+(?=[^\s{])|[{}]")
_BARE_BOX_VALUE = re.compile(r"[^\s$]+")
Box = tuple[int, int, "str | None"]  # (start, end just past the closing brace, raw content)


def find_boxes(text: str) -> list[Box]:
    """Every outermost box of `text`, in order; a box in a box is content (`\\boxed{\\boxed{9}}`
    holds `\\boxed{9}`). content is None for a box never closed (cut off): always the last one."""
    found: list[Box] = []
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


def last_boxed(text: str) -> str | None:
    """The stripped content of the LAST box of the whole text (gold solutions: `"so \\boxed{1}."`
    -> `1`), None when there is none or it is never closed. A completion's is `extract_answer`'s."""
    boxes = find_boxes(text)
    return boxes[-1][2].strip() if boxes and boxes[-1][2] is not None else None


def _answer_boxes(turn: str) -> list[Box]:
    """The turn's boxes, content stripped, empty ones (the instruction's `\\boxed{}` echoed back)
    skipped; an unclosed last box stays (content None)."""
    return [(s, e, c if c is None else c.strip()) for s, e, c in find_boxes(turn) if c is None or c.strip()]


def boxes_of(text: str) -> list[tuple[int, int, str]]:
    """The closed, non-empty boxes of `answer_turn(text)`, with positions in that turn."""
    return [b for b in _answer_boxes(answer_turn(text)) if b[2] is not None]


# What may sit between two boxes that list the parts of one answer: spaces, commas, semicolons,
# `&`, math delimiters, LaTeX spacing and "and". Any other word (e.g. "Wait, actually") separates.
_BOX_GAP = re.compile(r"(?:\s|[,;&$]|\\[()\[\]]|\\q?quad|\\[,;:! ]|\\text\{\s*+(?:and|,)?\s*+\}|\band\b)*+")
# Boxes offered as alternatives: `\boxed{18} or \boxed{19}`, `$\boxed{18}$, or perhaps $\boxed{19}$`.
_ALTERNATIVE_GAP = re.compile(
    r"(?:\s|[,;/$]|\\[()\[\]]|\\q?quad|\\[,;:! ]|\\text\{\s*+or\s*+\}|\b(?:maybe|perhaps|possibly|either)\b)*+"
    r"\bor\b(?:\s|[,;/$]|\\[()\[\]]|\b(?:maybe|perhaps|possibly|even)\b)*+", re.IGNORECASE)
_MAX_BOX_GAP = 200  # boxes further apart than this are separate answers
_MAX_JOINED_BOXES = 20  # a find-all answer lists a few parts, not hundreds


def box_gap(gap: str) -> str:
    """What the text between two boxes makes of them: "list" (parts of one answer), "alternatives"
    (an "or") or "" (any other text: separate answers, e.g. a revision)."""
    if len(gap) > _MAX_BOX_GAP:
        return ""
    if _BOX_GAP.fullmatch(gap):
        return "list"
    return "alternatives" if _ALTERNATIVE_GAP.fullmatch(gap) else ""


def final_boxes(text: str) -> list[str]:
    """The last box's content, preceded by the boxes listed with it (`\\boxed{1}, \\boxed{2}`);
    [] when the last box is never closed or there is none."""
    turn = answer_turn(text)
    boxes = _answer_boxes(turn)[-_MAX_JOINED_BOXES:]
    if not boxes or boxes[-1][2] is None:
        return []
    run = [boxes[-1]]  # built backwards from the last box
    for prev in reversed(boxes[:-1]):
        if box_gap(turn[prev[1] : run[-1][0]]) != "list":
            break
        run.append(prev)
    return [b[2] for b in reversed(run)]


# =============================================================================================
# Extraction: the final answer of a completion
# =============================================================================================
# Decoding with special tokens kept leaves chat-template debris. The answer turn ends at its first
# end-of-turn token; whatever the model wrote after it (a new "user" turn...) is not its answer.
_END_OF_TURN = re.compile(
    r"<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end_of_text\|>|<\|end\|>|</s>|<\|im_start\|>"
    r"|<｜end▁of▁sentence｜>")
_ROLE_HEADER = re.compile(r"^[ \t]*+(?:assistant|user|system)[ \t]*+\n"
                          r"|<\|start_header_id\|>\w*<\|end_header_id\|>")
_MAX_SCAN_CHARS = 100_000  # only the end of a completion (~25k tokens) is read for its answer
# `#### 18` alone on its line; a markdown heading like `#### Step 1: ...` is not an answer.
_GSM8K_ANSWER = re.compile(r"^[ \t]*+####[ \t]*+(\S++)[ \t]*+$", re.MULTILINE)
# Possessive quantifiers (*+, ++) keep these regexes linear on adversarial text (2 MB of spaces).
_ANSWER_PHRASE = re.compile(r"(?:the\s++)?(?:final\s++)?answer\s*+(?:\*\*)?\s*+(?:is\b\s*+:?|:)[ \t]*+",
                            re.IGNORECASE)
# Eval only: a bold "**Final Answer**" heading with the answer on the next line, and "the final
# answer to the question is X" (up to 100 characters between "answer" and "is", as Math-Verify).
_EVAL_ANSWER_PHRASE = re.compile(
    _ANSWER_PHRASE.pattern + r"|final\s++answer\s*+(?:\*\*)?[ \t]*+\n\s*+"
    r"|(?:the\s++)?final\s++answer\b[^.\n$\\]{1,100}?\b(?:is|=)\s*+:?[ \t]*+", re.IGNORECASE)
_DELIMITED = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]|\*\*(.+?)\*\*", re.DOTALL)
_CHOICE = re.compile(r"\(?[A-Ea-e]\)?")
# Where an answer stated in words ends: a line break, a full stop, "I hope it is correct", a clause.
_CLAUSE_END = re.compile(r"\n|\.(?=\s|$)|;\s|\s(?:I\s+hope|because|since|which|as\s+(?:it|this))\b", re.IGNORECASE)
# In "the total number of apples is 18", the answer is what follows the last of these.
_RESULT_WORD = re.compile(r"(?:\b(?:is|are|equals|be|of)\b\s*+:?|=)\s*+")
EXTRACTIONS = ("strict", "eval")


def after_thinking(text: str) -> str:
    """The text after the LAST `</think>` (thinking is scratch work, never read for the answer);
    "" when `<think>` never closes; the text itself without think tags. (A template may put
    `<think>` in the prompt, so a completion may hold only `</think>`.)"""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>"):]
    return "" if "<think>" in text else text


def answer_turn(text: str) -> str:
    """What is read for the answer: the first non-blank stretch between end-of-turn tokens, its
    role name ("assistant\\n") and thinking dropped, cut to its last _MAX_SCAN_CHARS characters."""
    for part in _END_OF_TURN.split(text):
        part = _ROLE_HEADER.sub("", part)
        if part.strip():
            return after_thinking(part)[-_MAX_SCAN_CHARS:]
    return ""


def _tidy(answer: str, punctuation: str) -> str | None:
    """Strip spaces and trailing `punctuation` (prose drops its full stop; `\\boxed{5!}` keeps
    its `!`); "" becomes None."""
    return answer.strip().rstrip(punctuation).strip() or None


def _math_answer(value: str) -> str | None:
    """Prose as an answer if it holds a digit or a backslash or is a choice letter like `(C)`; a
    plain word ("not", "yes", "clear") is never one."""
    value = _tidy(re.sub(r"(?<!\\)\$", "", value).replace("\\(", "").replace("\\)", ""), ".,;:!")
    if value and (re.search(r"[\d\\]", value) or _CHOICE.fullmatch(value)):
        return value
    return None


def _stated_answer(text: str, phrase: re.Match, extraction: str) -> str | None:
    """The answer right after an answer phrase. strict: a math span (`$...$`, `\\(...\\)`,
    `\\[...\\]`, `**X**`) or one token. eval: also several tokens (`3 \\sqrt{2}`), the value after
    a sentence's last "is" / "=" ("The total is 18."), a number before words ("18 apples")."""
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
        return None  # "the answer is not 5"; "the answer is \box" (cut off, not a box find_boxes reads)
    results = list(_RESULT_WORD.finditer(clause))
    if results and re.match(r"[A-Za-z]{2}", clause) and _math_answer(clause[results[-1].end() :]):
        clause = clause[results[-1].end() :]  # a sentence: "the total ... is 18"
    tokens = clause.split()
    if tokens and _number(_clean(tokens[0].rstrip(".,;:!"))) is not None \
            and not re.search(r"[\d\\=+*/^]", " ".join(tokens[1:])):
        return _math_answer(tokens[0])  # a number and its unit words
    return _math_answer(clause)


def _last_statement(text: str, extraction: str, after: int = 0) -> str | None:
    """The answer of the last answer phrase at or after position `after` that states one."""
    phrases = [m for m in (_EVAL_ANSWER_PHRASE if extraction == "eval" else _ANSWER_PHRASE).finditer(text)
               if m.start() >= after]
    # strict: only the last phrase counts ("the answer is not 5" ends it); eval: the last 20 (bounded time)
    for phrase in reversed(phrases[-1:] if extraction == "strict" else phrases[-_MAX_JOINED_BOXES:]):
        answer = _stated_answer(text, phrase, extraction)
        if answer is not None:
            return answer
    return None


def answer_statements(text: str) -> list[tuple[int, str]]:
    """Every (start, answer) `answer_turn(text)` states, in order: each box of `boxes_of`, each
    `#### 18` and "the answer is 18" read as strict `extract_answer` reads one. For rewards'
    negative rules: a negative must not state the gold anywhere."""
    turn = answer_turn(text)
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
    """The final answer of `answer_turn(text)`, or None. strict (default), first found of: the
    content of the LAST non-empty box; the last `#### N`; the last "the (final) answer is X" /
    "Final Answer: X" / "Answer: X", X a math span, `**X**` or one token with a digit, a backslash
    or a choice letter. eval (evaluate.py, as Qwen2.5-Math and Math-Verify): an answer statement
    AFTER the last box beats it (the box was a step), read over several tokens, from a sentence
    ("The total is 18.") or after a "**Final Answer**" heading.
    Never extracted: a last bare number (a guess lying in the text), an unclosed last box (cut
    off: an earlier box may be a revised step, so none is taken), a plain word after "the answer
    is" (`not 5`, `yes`: Math-Verify would read a product of letters)."""
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction={extraction!r}: accepted {' | '.join(EXTRACTIONS)}")
    turn = answer_turn(text)
    boxes = _answer_boxes(turn)
    if boxes:
        if extraction == "eval" and boxes[-1][2] is not None:
            later = _last_statement(turn, extraction, after=boxes[-1][1])
            if later is not None:
                return later
        return boxes[-1][2]
    gsm8k = _GSM8K_ANSWER.findall(turn)
    if gsm8k:
        return _tidy(gsm8k[-1], ".,;:")
    return _last_statement(turn, extraction)


# =============================================================================================
# Refusals, normalisation and the pure-Python fast path
# =============================================================================================
_UNSAFE = re.compile(
    r"__|`|\"|\b(?:import|lambda|eval|exec|compile|getattr|setattr|globals|locals|subprocess)\b"
    r"|\bos\s*\.|\bsys\s*\.|\bopen\s*\(")
# Ruinous for sympy (minutes, gigabytes), refused so a generator cannot stall training with them:
# a numeric power tower (9^{9^{9}}), an exponent of 5+ digits, a factorial of a 5+ digit number or
# of a factorial (`(10!)!`). What no cheap rule catches ((10^7)!) meets the worker timeout.
_TOO_BIG = re.compile(
    r"\d\s*(?:\^|\*\*)\s*\{?\s*\d+\s*(?:\^|\*\*)\s*\{?\s*\d|(?:\^|\*\*)\s*\{?\s*[+-]?\d{5}"
    r"|\d{5}\s*+(?:\\right\s*+)?[)}\]]*+\s*+!|!\s*+(?:\\right\s*+)?[)}\]]++\s*+!")
_MAX_NESTING = 20  # brace/bracket depth; real answers stay under ~6
_TEXT_UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm|textrm|rm)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm|textrm)\s*\{([^{}]*)\}")
_WORD_UNIT = re.compile(r"([+-]?[\d.,/]+)\s+[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)?")
_MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "mod", "and", "or"}
# Plain words ("five", "Sunday"): Math-Verify would read a product of letters (f*i*v*e).
_WORDS = re.compile(r"(?=.*[A-Za-z]{3})[A-Za-z ]+")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNMENT = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)", re.DOTALL)


def _clean(s: str) -> str:
    """Drop what never changes a value: math delimiters, `\\left`/`\\right`, spacing, `\\$`, `%`,
    degrees, a trailing unit (`\\text{ cm}`, `10 dollars`), thousands commas, an enclosing box."""
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
    """For string equality: `\\text{}` unwrapped, spaces removed, a choice `(C)` as `C`."""
    s = re.sub(r"\s+", "", _TEXT_WRAP.sub(r"\1", s))
    return s.strip("()").upper() if _CHOICE.fullmatch(s) else s


def _split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside brackets or braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    return parts + [s[start:]]


def _parts(s: str) -> list[str]:
    """The comma-separated parts of a cleaned answer: 2 in `5, 7` and `\\{1, 2\\}`, 1 in `(3, 4)`."""
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]
    return [part for part in _split_top_level(s) if part.strip()]


# A number the fast path reads exactly: (value, is_decimal). Decimals are the only approximations.
_Number = tuple[Fraction, bool]
_INT = r"[+-]?\d+"
_DECIMAL = r"[+-]?(?:\d+\.\d*|\.\d+)"
_SCIENTIFIC = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\s*\\(?:times|cdot)\s*10\s*\^)"
                         r"\s*\{?([+-]?\d{1,3})\}?")
_FRAC = re.compile(r"([+-]?)\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_SLASH = re.compile(rf"({_INT})\s*/\s*({_INT})")


def _number(s: str) -> _Number | None:
    """A plain number: integer, decimal, `5.47e5` / `2.78\\times 10^{-6}` (exponent <= 3 digits),
    `a/b`, `\\frac{a}{b}` / `\\frac12` of integers. Else None (left to Math-Verify)."""
    s = s.strip()
    if re.fullmatch(_INT, s):
        return Fraction(int(s)), False
    if re.fullmatch(_DECIMAL, s):
        return Fraction(s), True
    m = _SCIENTIFIC.fullmatch(s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), True
    m = _SLASH.fullmatch(s)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
    else:
        m = _FRAC.fullmatch(s)
        if not m:
            return None
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        num = -num if m.group(1) == "-" else num
    return (Fraction(num, den), False) if den != 0 else None


def _numbers(s: str) -> tuple[str, list[_Number]] | None:
    """(kind, values) of a number or flat collection of numbers, `x =` dropped. kind: "number",
    "set" (`1, -2` or `\\{1, -2\\}`: values distinct and sorted) or the brackets of a tuple or
    interval ("()", "[)"...)."""
    s = assignment.group(1).strip() if (assignment := _ASSIGNMENT.fullmatch(s)) else s  # `x = 18`: 18
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
    if kind == "set":
        values = sorted({v[0]: v for v in values}.values())
        kind = "number" if len(values) == 1 else "set"  # `1, 1` is the number 1
    return kind, values  # type: ignore[return-value]


def _terminates(x: Fraction) -> bool:
    """Whether x has a finite decimal expansion: its denominator divides a power of ten."""
    return 10 ** x.denominator.bit_length() % x.denominator == 0


def _same_number(a: _Number, b: _Number) -> bool:
    """Equal, or a decimal within REL_TOL of an exact value with no finite decimal expansion."""
    if a[0] == b[0]:
        return True
    for approx, exact in ((a, b), (b, a)):
        if approx[1] and not exact[1] and not _terminates(exact[0]):
            return abs(approx[0] - exact[0]) <= REL_TOL * abs(exact[0])
    return False


def _fast_compare(answer: str, gold: str) -> Verdict | None:
    """Decide from numbers alone (`_numbers`), or None to leave it to Math-Verify. Ordered
    collections compare element by element with the same brackets (`[2,5)` != `[2,5]`)."""
    a, g = _numbers(answer), _numbers(gold)
    if a is None or g is None:
        return None
    (a_kind, a_vals), (g_kind, g_vals) = a, g
    if a_kind != g_kind:
        if "number" in (a_kind, g_kind):
            return "wrong"  # one number against two or more
        # A set and `(1,2)` (a tuple or an open interval) can still be equal under Math-Verify's
        # rules; intervals with different closed ends (`[2,5)`, `[2,5]`) cannot.
        return None if {a_kind, g_kind} & {"set", "()"} else "wrong"
    if len(a_vals) != len(g_vals):
        return "wrong"
    return "correct" if all(_same_number(x, y) for x, y in zip(a_vals, g_vals)) else "wrong"


# =============================================================================================
# The Math-Verify worker process: bounded time off the main thread, no eval
# =============================================================================================
def _mv_compare(answer: str, gold: str) -> tuple[Verdict, str]:
    """(in the worker) Parse both with Math-Verify's LaTeX parser and compare. Its float check
    rounds to decimal PLACES (6 by default: 6.72e-5 = 6.73e-5), so it gets 12 and `_approx_equal`
    judges approximations of irrational values (`6.283185` ~ `2\\pi`)."""
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
    """(in the worker) A sympy Float within REL_TOL of an exact real with no finite decimal form."""
    import sympy

    for approx, exact in ((x, y), (y, x)):
        if not isinstance(approx, sympy.Float) or not isinstance(exact, sympy.Expr) \
                or not exact.is_number or exact.has(sympy.Float) \
                or (exact.is_Rational and _terminates(Fraction(int(exact.p), int(exact.q)))):
            continue
        value = sympy.N(exact, 30)
        if value.is_real and value.is_finite:
            tol = sympy.Rational(REL_TOL.numerator, REL_TOL.denominator)
            return bool(abs(sympy.N(approx, 30) - value) <= tol * abs(value))
    return False


def _worker_main() -> None:
    """(the worker) One JSON request per stdin line, one JSON verdict per line; ends with stdin."""
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
        self.proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.buffer, self.ready = b"", False

    def read_line(self, timeout_s: float) -> bytes | None:
        """The next line from the worker; None after timeout_s, b"" if the worker died."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _ready_worker() -> _Worker:
    """(under _WORKER_LOCK) This process's worker, started (or restarted, if it died while idle)
    as needed, once it has said "ready"."""
    global _WORKER
    if _WORKER is not None and _WORKER.owner_pid == os.getpid() and _WORKER.proc.poll() is not None:
        _count("worker_crashes")
        _WORKER.kill()
        _WORKER = None
    if _WORKER is None or _WORKER.owner_pid != os.getpid():
        _WORKER = _Worker()
    if not _WORKER.ready:
        line = _WORKER.read_line(WORKER_START_TIMEOUT_S)
        if line != b"ready":
            _WORKER.kill()
            _WORKER = None
            raise RuntimeError(
                f"the grading worker ({sys.executable} {__file__} --worker) did not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s (got {line!r}); its traceback, if any, is on stderr. "
                "Is math-verify installed in this interpreter?")
        _WORKER.ready = True
    return _WORKER


def warm_up() -> None:
    """Start the worker now (1-3 s) rather than in the first comparison that needs it."""
    with _WORKER_LOCK:
        _ready_worker()


@atexit.register
def shutdown_worker() -> None:
    """Stop the worker (also done at exit). The next comparison that needs it starts a new one."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is not None and _WORKER.owner_pid == os.getpid():
            _WORKER.kill()
        _WORKER = None


def _ask_worker(answer: str, gold: str) -> tuple[Verdict, str]:
    """Compare in the worker, waiting at most WORKER_TIMEOUT_S once it is ready. On a timeout or a
    crash the worker is killed and a fresh one started right away (it warms up while we return)."""
    global _WORKER
    with _WORKER_LOCK:
        worker = _ready_worker()
        _count("worker_calls")
        try:
            worker.proc.stdin.write((json.dumps({"answer": answer, "gold": gold}) + "\n").encode())
            line = worker.read_line(WORKER_TIMEOUT_S)
        except BrokenPipeError:
            line = b""
        if not line:
            failure = "timeout" if line is None else "worker_crash"
            _count("worker_timeouts" if line is None else "worker_crashes")
            worker.kill()
            _WORKER = _Worker()
            return "unparseable", failure
    reply = json.loads(line)
    _count(f"worker:{reply['how']}")
    return reply["verdict"], reply["how"]


# =============================================================================================
# Grading
# =============================================================================================
@functools.lru_cache(maxsize=CACHE_SIZE)  # thread-safe; a timeout is remembered too: no retry
def _compare(answer: str, gold: str) -> tuple[Verdict, str]:
    """(verdict, how) for an extracted answer against a gold answer: refusals first, then the
    cheap checks, then the worker."""
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        _count("too_long")
        return "unparseable", "too_long"
    if _UNSAFE.search(answer):
        _count("unsafe")
        return "unparseable", "unsafe"
    nesting = max(itertools.accumulate((ch in "([{") - (ch in ")]}") for ch in answer), default=0)
    if _TOO_BIG.search(answer) or nesting > _MAX_NESTING:
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
    if _WORDS.fullmatch(_TEXT_WRAP.sub(r"\1", answer)) and not _WORDS.fullmatch(_TEXT_WRAP.sub(r"\1", gold)):
        _count("words")
        return "unparseable", "words"
    return _ask_worker(answer, gold)


def grade_answer(answer: str, gold: str) -> Grade:
    """Grade an extracted answer against a gold answer (LaTeX, `$...$` or not, `\\$18`, `27.0`...);
    cached per (answer, gold)."""
    if not isinstance(answer, str) or not isinstance(gold, str):
        raise TypeError(f"answer and gold must be str, got {type(answer).__name__} and {type(gold).__name__}")
    if not gold.strip():
        raise ValueError("the gold answer is empty; check the benchmark loader")
    verdict, how = _compare(answer, gold)
    return Grade(verdict, answer, how)


def grade(pred_text: str, gold: str, *, extraction: str = "strict") -> Grade:
    """Grade a completion: its `extract_answer`, then, if not correct, the `final_boxes` listed
    together as one list (`\\boxed{1}, \\boxed{2}`) and, for "eval", the last n boxes joined, n the
    gold's number of parts ("(a) ... \\boxed{5}. (b) ... \\boxed{7}" for `5, 7`) unless offered as
    alternatives. "correct" if any comparison is, "wrong" only if every one says so."""
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
        parts = len(_parts(_clean(gold)))
        every = boxes_of(pred_text)[-parts:]
        turn = answer_turn(pred_text)
        alternatives = any(box_gap(turn[a[1] : b[0]]) == "alternatives" for a, b in zip(every, every[1:]))
        if 2 <= parts <= _MAX_JOINED_BOXES and len(every) == parts and every[-1][2] == answer and not alternatives:
            joined.append(", ".join(b[2] for b in every))
    for candidate in dict.fromkeys(joined):
        other = grade_answer(candidate, gold)
        if other.verdict == "correct":
            return other
        if result.verdict == "wrong" and other.verdict != "wrong":
            result = other  # "wrong" needs every comparison to say so
    return result


def is_correct(pred_text: str, gold: str, *, extraction: str = "strict") -> bool:
    """Whether the completion's final answer is equivalent to gold (see `grade`)."""
    return grade(pred_text, gold, extraction=extraction).verdict == "correct"


def is_confidently_wrong(pred_text: str, gold: str, *, extraction: str = "strict") -> bool:
    """Whether an answer was extracted, parsed and found unequal by every check: no answer, a
    refusal, a parse failure or a timeout are False (rewards.negative_check builds on this)."""
    return grade(pred_text, gold, extraction=extraction).verdict == "wrong"


# =============================================================================================
# Answer shapes, for the negative rules of pns_mini.rewards
# =============================================================================================
# What may stand in a single number besides digits: fractions, roots, pi, products, functions.
_NUMERIC_COMMANDS = re.compile(r"\\(?:frac|sqrt|pi|cdot|times|div|binom|log|ln|exp|sin|cos|tan|cot|sec|csc)"
                               r"(?![A-Za-z])")
# Alternatives inside one answer: "18 or 19", `18 \text{ or } 19`, `18 \lor 19`, `18 \pm 1`.
_ALTERNATIVE = re.compile(r"\b(?:or|and)\b|\\(?:lor|vee|pm|mp)(?![A-Za-z])|;")


def is_numeric(answer: str) -> bool:
    """Whether `answer` is ONE number, written plainly or as an expression of numbers: `18`,
    `\\$18`, `18 \\text{ apples}`, `-\\frac{3}{4}`, `2\\sqrt{3}`, `3\\pi`, `5!`, `10^{6}`, `x = 18`,
    `\\binom{5}{2}`, `\\log_2 8`. Not: a symbol or expression with a variable (`x`, `ab`, `2x`), a
    word (`five`), a list (`18, 19`), alternatives (`18 \\text{ or } 19`), a tuple, an interval,
    `\\infty`, or nothing."""
    s = _clean(answer)
    s = assignment.group(1).strip() if (assignment := _ASSIGNMENT.fullmatch(s)) else s  # `x = 18`: 18
    if _number(s) is not None:
        return True
    if "," in s or _ALTERNATIVE.search(_TEXT_WRAP.sub(r" \1 ", s)):
        return False
    rest = _SCIENTIFIC.sub("1", _NUMERIC_COMMANDS.sub(" ", s))
    return bool(re.search(r"\d|\\pi", s)) and not re.search(r"[A-Za-z\\]", rest)


def answer_values(answer: str) -> int:
    """How many values an answer offers: 1 for `18` or `(3, 4)` (one tuple), 2 for `18, 19`,
    `\\{18, 19\\}`, `18 \\text{ or } 19`, `18 \\pm 1`, `x = 18 \\text{ and } x = 19`. 0 for none."""
    return sum(1 + len(_ALTERNATIVE.findall(p)) for p in _parts(_TEXT_WRAP.sub(r" \1 ", _clean(answer))))


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        sys.exit("usage: python pns_mini/grading.py --worker  (started by pns_mini.grading itself)")
    _worker_main()
