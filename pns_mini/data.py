"""Problems, the prompt template, the answer-format constants and JSONL io.

Everything here returns plain dicts and strings; no torch.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pns_mini.grading import last_boxed  # the one box scanner; data reads golds with it

# ---------------------------------------------------------------------------------------------
# Answer format: defined once, used by the prompt template and by the format reward.
# ---------------------------------------------------------------------------------------------
BOXED_COMMAND = r"\boxed"  # the final answer must sit in the LAST \boxed{...} of the completion
ANSWER_INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."
SYSTEM_PROMPT = "You are a helpful assistant that solves math problems."


def final_answer_sentence(answer: str) -> str:
    r"""The closing sentence of a worked solution: "The final answer is \boxed{18}"."""
    return f"The final answer is {BOXED_COMMAND}{{{answer}}}"


def prompt_text(question: str) -> str:
    """The user message for one problem (question + the answer-format instruction)."""
    return f"{question.strip()}\n{ANSWER_INSTRUCTION}"


# One worked example shown before the question (a one-shot prompt). Small instruct models (the
# embedded SmolLM2-135M) almost never write \boxed{} from the instruction alone: zero-shot, 0 of
# 16 samples were well-formed; with this example about 5 in 8 are. Larger models lose nothing.
EXAMPLE_QUESTION = "A baker makes 4 trays of 6 muffins and sells 15 of them. How many muffins are left?"
EXAMPLE_SOLUTION = ("The baker makes 4 * 6 = 24 muffins.\nAfter selling 15, 24 - 15 = 9 muffins are left.\n"
                    "The final answer is \\boxed{9}.")


def prompt_messages(question: str) -> list[dict]:
    """The chat messages for one problem: system, the worked example (user + assistant turn), the
    question. This is also the `prompt` of the preference pairs synthesize.py writes."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt_text(EXAMPLE_QUESTION)},
            {"role": "assistant", "content": EXAMPLE_SOLUTION},
            {"role": "user", "content": prompt_text(question)}]


def chat_prompt(tokenizer, messages: list[dict], *, enable_thinking: bool = False) -> str:
    """`messages` through the tokenizer's chat template, the assistant's generation prompt appended.
    enable_thinking goes to the template as TRL's `chat_template_kwargs` would pass it: Qwen3's
    appends an empty `<think>\n\n</think>\n\n` block for False (our default: the model answers at
    once), and for True lets the model think first (grading reads the answer after `</think>`);
    templates without the switch (Qwen2.5, Llama 3, SmolLM2) ignore it. A template adds its default
    system turn only when `messages` has none (ours always has one)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=enable_thinking)


def format_prompt(tokenizer, question: str, *, enable_thinking: bool = False) -> str:
    """The full prompt string for `question`: `chat_prompt` over `prompt_messages`, else (a
    tokenizer without a chat template) a plain "Question/Answer" layout."""
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, prompt_messages(question), enable_thinking=enable_thinking)
    return (f"{SYSTEM_PROMPT}\n\nQuestion: {prompt_text(EXAMPLE_QUESTION)}\nAnswer: {EXAMPLE_SOLUTION}\n\n"
            f"Question: {prompt_text(question)}\nAnswer: ")


def prompt_template_hash() -> str:
    """A short hash of the template pieces, stamped into evaluation outputs."""
    blob = "\x00".join([SYSTEM_PROMPT, ANSWER_INSTRUCTION, BOXED_COMMAND, EXAMPLE_QUESTION, EXAMPLE_SOLUTION])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# JSONL io: append-only, flushed per row; malformed rows are named by file and line.
# ---------------------------------------------------------------------------------------------
class DataError(ValueError):
    """A malformed input file. The message names the file, the line and the field."""


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), line_key: str | None = None) -> list[dict]:
    """Read a JSONL file into a list of dicts. Blank lines are skipped. A line that is not a JSON
    object, or lacks one of `required`, raises DataError("FILE:LINE: ..."). With `line_key`, each
    row also gets its line number under that key (for errors found later)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                                f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise DataError(f"{path}:{lineno}: missing field '{key}' (have: {', '.join(row) or 'none'})")
            if line_key:
                row[line_key] = lineno
            rows.append(row)
    return rows


def iter_jsonl_tolerant(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of an append-only output file we wrote ourselves; a torn last line (a run killed
    mid-write) is skipped, so resuming after `kill -9` works."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


MESSAGE_ROLES = ("system", "user", "assistant")


def read_pairs(path: str | os.PathLike, *, prompt_required: bool = True) -> list[dict]:
    """Rows of a preference JSONL in TRL's format, every row checked; each gets "line" (its line
    number) and "form". Two forms, as TRL's DPOTrainer and RewardTrainer read them:
      string          prompt / chosen / rejected are non-empty strings (TRL's standard form);
      conversational  prompt is a list of {role, content} messages and chosen / rejected are
                      [{"role": "assistant", "content": str}].
    With prompt_required=False the prompt may be absent (TRL's implicit-prompt form): chosen and
    rejected then hold whole texts, or whole conversations ending in an assistant turn."""
    required = ("prompt", "chosen", "rejected") if prompt_required else ("chosen", "rejected")
    rows = read_jsonl(path, required, line_key="line")
    if not rows:
        raise DataError(f"{path}: no pairs (the file is empty); expected one JSON object a line with "
                        f"{', '.join(repr(k) for k in required)}")
    for row in rows:
        where, implicit = f"{path}:{row['line']}", "prompt" not in row
        keys = ("chosen", "rejected") if implicit else ("prompt", "chosen", "rejected")
        conversational = isinstance(row[keys[0]], list)  # the prompt's form (implicit: the chosen's) sets the row's
        row["form"] = "conversational" if conversational else "string"
        for key in keys:
            value = row[key]
            if not conversational:
                if not isinstance(value, str) or not value.strip():
                    accepted = ("a list of {role, content} messages or a non-empty string" if key == "prompt"
                                else "a non-empty string, as the prompt is one (TRL's standard form)")
                    raise DataError(f"{where}: field '{key}' must be {accepted}, got {value!r:.80}")
                continue
            ok = isinstance(value, list) and bool(value) and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
            shape = "[{role, content}, ...]"
            if key != "prompt":  # the completion: one assistant turn (implicit prompt: a conversation ending in one)
                ok = ok and (implicit or len(value) == 1) and value[-1]["role"] == "assistant" \
                    and value[-1]["content"].strip() != ""
                shape = ('[..., {"role": "assistant", "content": str}]' if implicit
                         else '[{"role": "assistant", "content": str}]')
            if not ok:
                raise DataError(f"{where}: field '{key}' must be {shape}, as the {keys[0]} is a message list "
                                f"(TRL's conversational form), got {value!r:.80}")
            # a misspelt role ("sytem", "usr") is not an error to a chat template: it would drop
            # the turn or inject its default system prompt, so the model would train on another prompt
            unknown = next((m["role"] for m in value if m["role"] not in MESSAGE_ROLES), None)
            if unknown is not None:
                raise DataError(f"{where}: field '{key}' has a message with unknown role {unknown!r} "
                                f"(accepted: {', '.join(MESSAGE_ROLES)})")
        switches = row.get("chat_template_kwargs")
        if switches is not None and not isinstance(switches, dict):
            raise DataError(f"{where}: field 'chat_template_kwargs' must be an object of template switches "
                            f"(e.g. {{\"enable_thinking\": false}}), got {switches!r:.80}")
        if _completion_text(row["chosen"]) == _completion_text(row["rejected"]):
            raise DataError(f"{where}: fields 'chosen' and 'rejected' hold the same text: a pair needs two "
                            f"different completions (on this one DPO stays at loss ln 2)")
    return rows


def _completion_text(value) -> str:
    """A checked chosen / rejected value as one comparable string (a message list: its JSON)."""
    return value.strip() if isinstance(value, str) else json.dumps(
        [{**m, "content": m["content"].strip()} for m in value], sort_keys=True)


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and flush it to disk, so an interrupted run loses at most the row in flight."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _appended[Path(path).name] = _appended.get(Path(path).name, 0) + 1
    kill_point(f"{Path(path).name}:{_appended[Path(path).name]}")


_appended: dict[str, int] = {}  # rows appended by this process, per file name (for kill_point)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole file under a temp name (.NAME.tmp-PID) and rename it: readers see the old file
    or the new one, never half of one (runs.remove_stale_temps clears a killed write's temp)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Rewrite a JSONL file atomically (`write_atomic`), one row a line."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def kill_point(name: str) -> None:
    """Test hook of the kill -9 tests: SIGKILL this process when $PNS_MINI_KILL_AT is `name`:
    "metrics.jsonl:3" = right after this process appended its 3rd row to a metrics.jsonl,
    "checkpoint:2" = while checkpoints/step-2 is still a temp folder. Unset: nothing happens."""
    if os.environ.get("PNS_MINI_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a partial last line (no trailing newline) left by a killed writer, so that the next
    append starts on a fresh line. Returns the number of bytes removed. Call once before resuming."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


# ---------------------------------------------------------------------------------------------
# Gold answers: every loader turns its upstream row into a FINAL ANSWER string.
# ---------------------------------------------------------------------------------------------
_MATH_SPAN = r"\$((?:[^$\\]|\\.)*)\$"  # one `$...$` span; `\$` (a dollar sign) stays inside


def unwrap_math(text: str) -> str:
    """Drop `$` delimiters from a gold answer: `"$10-4 n$"` -> `"10-4 n"`, `"$$x$$"` -> `"x"`, a comma
    list of spans `"$69$,$84$"` -> `"69, 84"`. Prose between spans (`"$x=1$ or $x=2$"`, `"$4$ days"`)
    keeps the string whole (stripped): removing the outer `$` would leave a broken `x=1$ or $x=2`."""
    s = text.strip()
    single = s[1:-1] if len(s) > 4 and s.startswith("$$") and s.endswith("$$") else s  # $$x$$ -> $x$
    if re.fullmatch(rf"{_MATH_SPAN}(?:\s*,\s*{_MATH_SPAN})*", single):
        return ", ".join(m.strip() for m in re.findall(_MATH_SPAN, single))
    return s


def _field(row: dict, *names: str):
    """The first of `names` present in `row` (upstream layouts differ: local file vs Hub copy)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise DataError(f"missing field '{' or '.join(names)}' (have: {', '.join(row) or 'none'})")


def _text(row: dict, *names: str) -> str:
    value = _field(row, *names)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field '{names[0]}' must be a non-empty string, got {value!r:.60}")
    return value


def _gsm8k_final(solution: str) -> str:
    """The number after the last `#### `, commas removed: `"#### 1,600"` -> `"1600"`."""
    if "#### " not in solution:
        raise DataError("field 'answer' has no '#### ' final-answer line")
    return solution.rsplit("#### ", 1)[1].strip().replace(",", "")


def gsm8k_solution_to_boxed(solution: str) -> str:
    r"""A GSM8K reference solution in our answer format (a verified-correct "chosen" answer):
    calculator annotations `<<48/2=24>>` removed and the final `#### 72` line replaced by
    `final_answer_sentence` ("The final answer is \boxed{72}", commas dropped as in the gold)."""
    gold = _gsm8k_final(solution)  # a DataError (a ValueError) without a '#### ' line
    body = re.sub(r"<<[^<>]*>>", "", solution.rpartition("#### ")[0]).rstrip()
    return f"{body}\n{final_answer_sentence(gold)}"


def _boxed_gold(solution: str, field: str) -> str:
    gold = last_boxed(solution)
    if not gold:
        raise DataError(rf"field '{field}' has no closed \boxed{{...}} answer")
    return gold


def _number_gold(value) -> str:
    """amc23 stores answers as floats (27.0) and aime24 as 3-digit strings ("025"): both become
    the plain integer string ("27", "25"); a non-integral number keeps its own digits."""
    if isinstance(value, bool):
        raise DataError(f"field 'answer' must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else repr(value)
    s = str(value).strip()
    if re.fullmatch(r"-?\d+(\.0*)?", s):
        return str(int(float(s)))
    return s


# One converter per benchmark: upstream row -> {question, gold[, solution]}. Each accepts the
# layout of the local file (see shared/data/README.md) and of the Hub copy named in BENCHMARKS.
def _gsm8k_row(row: dict) -> dict:
    solution = _text(row, "answer")
    return {"question": _text(row, "question"), "gold": _gsm8k_final(solution), "solution": solution}


def _math500_row(row: dict) -> dict:
    # Local (BiRM layout): `answer` is the full solution. Hub (HuggingFaceH4/MATH-500): `solution`.
    key = "solution" if "solution" in row else "answer"
    solution = _text(row, key)
    return {"question": _text(row, "question", "problem"), "gold": _boxed_gold(solution, key), "solution": solution}


def _minerva_row(row: dict) -> dict:
    question = _text(row, "problem", "question")
    if "solution" not in row:  # Hub copy (math-ai/minervamath): `answer` is already final
        return {"question": question, "gold": unwrap_math(_text(row, "answer"))}
    solution = _text(row, "solution")
    return {"question": question, "gold": _boxed_gold(solution, "solution"), "solution": solution}


def _olympiadbench_row(row: dict) -> dict:
    question = _text(row, "question")
    context = row.get("context")
    if context and context != "None":  # upstream writes a missing context as null or "None"
        question = f"{context.strip()}\n{question}"
    answers = _field(row, "final_answer")
    if isinstance(answers, str):  # a Python-list literal such as "['2']": literal_eval, never eval
        try:
            answers = ast.literal_eval(answers)
        except (ValueError, SyntaxError):
            raise DataError(f"field 'final_answer' is not a list literal: {answers!r:.60}") from None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"field 'final_answer' must be a non-empty list of strings, got {answers!r:.60}")
    # The unit (often null or "None") is not part of the gold: graders compare values.
    return {"question": question, "gold": ", ".join(unwrap_math(a) for a in answers)}


def _college_math_row(row: dict) -> dict:
    return {"question": _text(row, "question"), "gold": unwrap_math(_text(row, "answer"))}


def _integer_answer_row(row: dict) -> dict:  # aime24 and amc23
    return {"question": _text(row, "question", "problem"), "gold": _number_gold(_field(row, "answer"))}


@dataclass(frozen=True)
class Benchmark:
    """Where one problem set lives and how its rows become {question, gold}."""

    name: str
    file: str  # path under the data dir, in the upstream layout
    count: int  # rows in the upstream split (the tests check it against the files)
    convert: Callable[[dict], dict]  # upstream row -> {question, gold[, solution]}
    id_field: str | None  # upstream id, used as f"{name}/{id}" when every row has one and all differ
    hub: tuple[str, str | None, str] | None  # (Hub dataset, config, split), tried when no file is found


def _benchmark(name, count, convert, id_field, hub):
    return Benchmark(name, f"benchmarks/{name}/test.jsonl", count, convert, id_field, hub)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    _benchmark("gsm8k", 1319, _gsm8k_row, "idx", ("openai/gsm8k", "main", "test")),
    _benchmark("math500", 500, _math500_row, None, ("HuggingFaceH4/MATH-500", None, "test")),
    _benchmark("minerva_math", 272, _minerva_row, "idx", ("math-ai/minervamath", None, "test")),
    _benchmark("olympiadbench", 675, _olympiadbench_row, "id",
               ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")),  # English, open-ended, text-only
    _benchmark("college_math", 2818, _college_math_row, None, None),  # no Hub copy known: the file only
    _benchmark("aime24", 30, _integer_answer_row, "id", ("HuggingFaceH4/aime_2024", None, "train")),
    _benchmark("amc23", 40, _integer_answer_row, "id", ("math-ai/amc23", None, "test")),
)}
ALL_BENCHMARKS = tuple(BENCHMARKS)  # in the table's order
GSM8K_TRAIN = Benchmark("gsm8k_train", "train/gsm8k/train.jsonl", 7473, _gsm8k_row, None,
                        ("openai/gsm8k", "main", "train"))


# ---------------------------------------------------------------------------------------------
# Finding the files: argument, then $PNS_MINI_DATA, then ../shared/data and ./data; else the Hub.
# ---------------------------------------------------------------------------------------------
def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for benchmark files, in order. An explicit `data_dir` or
    $PNS_MINI_DATA replaces the default search, so a typo there is not silently bypassed."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get("PNS_MINI_DATA"):
        return [Path(os.environ["PNS_MINI_DATA"])]
    return [Path(__file__).resolve().parents[2] / "shared" / "data", Path("data")]


def _rows_from_hub(spec: Benchmark, tried: list[Path]) -> list[dict]:
    tried_text = ", ".join(str(p) for p in tried)
    if spec.hub is None:
        raise DataError(f"{spec.name}: no local file (tried: {tried_text}) and no Hub copy is known; "
                        f"put the upstream file at <data dir>/{spec.file} or set PNS_MINI_DATA")
    hub_name, config, split = spec.hub
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    try:
        import datasets  # only needed here; the local path never imports it

        return [dict(r) for r in datasets.load_dataset(hub_name, config, split=split)]
    except Exception as e:  # re-raised with what was tried; nothing is swallowed
        note = " (HF_HUB_OFFLINE is set: only the local Hub cache was tried)" if offline else ""
        raise DataError(f"{spec.name}: no local file (tried: {tried_text}) and Hub dataset "
                        f"{hub_name!r} (config {config}, split {split}) failed{note}: "
                        f"{type(e).__name__}: {e}") from e


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Problems of one benchmark (or "gsm8k_train") as {id, question, gold[, solution]} dicts,
    in file order. Reads <data dir>/<spec.file>; only when no such file exists anywhere searched
    does it try `datasets.load_dataset` on the Hub copy. A bad row raises DataError("FILE:LINE: ...")."""
    spec = GSM8K_TRAIN if name == GSM8K_TRAIN.name else BENCHMARKS.get(name)
    if spec is None:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(ALL_BENCHMARKS)}, {GSM8K_TRAIN.name}")
    tried = [d / spec.file for d in data_dirs(data_dir)]
    path = next((p for p in tried if p.is_file()), None)
    rows = read_jsonl(path, line_key="line") if path else _rows_from_hub(spec, tried)

    upstream_ids = [row.get(spec.id_field) for row in rows] if spec.id_field else [None]
    use_upstream = None not in upstream_ids and len(set(upstream_ids)) == len(rows)
    problems = []
    for k, row in enumerate(rows):
        where = f"{path}:{row.pop('line')}" if path else f"{spec.hub[0]} row {k}"  # popped: not an upstream field
        try:
            fields = spec.convert(row)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        problems.append({"id": f"{spec.name}/{upstream_ids[k] if use_upstream else k}", **fields})
    return problems


# ---------------------------------------------------------------------------------------------
# Offline problems: seeded GSM8K-like word problems with exact integer answers, no files needed.
# ---------------------------------------------------------------------------------------------
_PEOPLE = [("Tom", "he", "his"), ("Maria", "she", "her"), ("Ravi", "he", "his"), ("Aisha", "she", "her"),
           ("Ken", "he", "his"), ("Lena", "she", "her"), ("Omar", "he", "his"), ("Sofia", "she", "her")]
_THINGS = ["apples", "marbles", "stickers", "pencils", "cards", "oranges", "stamps", "shells"]

# Each template: (rng, name, he, his) -> (question, worked steps, answer). Numbers are drawn so
# that every intermediate value and the answer are positive integers (divisions come out even).


def _collect(rng, name, he, his):
    obj = rng.choice(_THINGS)
    a, bags, per = rng.randint(5, 30), rng.randint(2, 6), rng.randint(3, 12)
    have = a + bags * per
    given = rng.randint(1, have - 1)
    q = (f"{name} has {a} {obj}. {he.capitalize()} buys {bags} bags of {per} {obj} each "
         f"and then gives away {given}. How many {obj} does {name} have now?")
    steps = [f"The bags hold {bags} * {per} = {bags * per} {obj}.",
             f"After buying, {name} has {a} + {bags * per} = {have} {obj}.",
             f"After giving away {given}, {he} has {have} - {given} = {have - given} {obj}."]
    return q, steps, have - given


def _change(rng, name, he, his):
    n1, p1, n2, p2 = rng.randint(2, 8), rng.randint(2, 9), rng.randint(2, 6), rng.randint(1, 5)
    cost = n1 * p1 + n2 * p2
    bill = next(b for b in (20, 50, 100, 200) if b > cost)  # the smallest note that covers it
    q = (f"{name} buys {n1} notebooks at ${p1} each and {n2} pens at ${p2} each. "
         f"{he.capitalize()} pays with a ${bill} bill. How many dollars of change does {he} get?")
    steps = [f"The notebooks cost {n1} * {p1} = ${n1 * p1}.",
             f"The pens cost {n2} * {p2} = ${n2 * p2}.",
             f"Together that is {n1 * p1} + {n2 * p2} = ${cost}.",
             f"The change is {bill} - {cost} = ${bill - cost}."]
    return q, steps, bill - cost


def _savings(rng, name, he, his):
    weekly, weeks = rng.randint(5, 25), rng.randint(3, 10)
    saved = weekly * weeks
    spent = rng.randint(1, saved - 1)
    item = rng.choice(["bike helmet", "board game", "jacket", "pair of shoes"])
    q = (f"{name} saves ${weekly} every week for {weeks} weeks. Then {he} spends ${spent} on a {item}. "
         f"How many dollars does {name} have left?")
    steps = [f"{name} saves {weekly} * {weeks} = ${saved}.",
             f"After the {item}, {saved} - {spent} = ${saved - spent} is left."]
    return q, steps, saved - spent


def _sharing(rng, name, he, his):
    trays, per_tray, friends = rng.randint(2, 5), rng.choice([6, 8, 10, 12]), rng.randint(2, 6)
    total = trays * per_tray
    eaten = total % friends + friends * rng.randint(1, 2)  # what is left splits evenly
    if eaten >= total:  # only with few, small trays; eat just the remainder (or one round)
        eaten = total % friends or friends
    each = (total - eaten) // friends
    q = (f"{name} bakes {trays} trays of cookies with {per_tray} cookies on each tray. {he.capitalize()} "
         f"eats {eaten} of them and shares the rest equally among {friends} friends. "
         f"How many cookies does each friend get?")
    steps = [f"{name} bakes {trays} * {per_tray} = {total} cookies.",
             f"After eating {eaten}, {total} - {eaten} = {total - eaten} are left.",
             f"Each friend gets {total - eaten} / {friends} = {each} cookies."]
    return q, steps, each


def _reading(rng, name, he, his):
    per_day, days, extra = rng.randint(10, 30), rng.randint(2, 7), rng.randint(5, 20)
    read = per_day * days + extra
    pages = read + rng.randint(10, 120)
    q = (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days and then "
         f"{extra} pages on the next day. How many pages are left to read?")
    steps = [f"In {days} days {name} reads {per_day} * {days} = {per_day * days} pages.",
             f"With the next day that is {per_day * days} + {extra} = {read} pages.",
             f"Pages left: {pages} - {read} = {pages - read}."]
    return q, steps, pages - read


def _store(rng, name, he, his):
    obj = rng.choice(["apples", "oranges", "lemons", "eggs"])
    boxes, per_box, monday = rng.randint(4, 12), rng.choice([10, 12, 20, 24]), rng.randint(3, 10)
    stock = boxes * per_box  # >= 40 > 3 * monday, so something is always left
    q = (f"{name}'s store has {boxes} boxes of {obj} with {per_box} {obj} in each box. It sells "
         f"{monday} {obj} on Monday and twice as many on Tuesday. How many {obj} are left?")
    steps = [f"The store has {boxes} * {per_box} = {stock} {obj}.",
             f"On Tuesday it sells 2 * {monday} = {2 * monday}.",
             f"In total it sells {monday} + {2 * monday} = {3 * monday}.",
             f"Left: {stock} - {3 * monday} = {stock - 3 * monday}."]
    return q, steps, stock - 3 * monday


def _trip(rng, name, he, his):
    v1, h1 = rng.choice([30, 40, 45, 50, 60]), rng.randint(2, 4)
    v2, h2 = rng.choice([20, 25, 35, 55]), rng.randint(2, 3)
    q = (f"{name} drives at {v1} miles per hour for {h1} hours, then at {v2} miles per hour for "
         f"{h2} hours. How many miles does {he} drive in total?")
    steps = [f"First part: {v1} * {h1} = {v1 * h1} miles.",
             f"Second part: {v2} * {h2} = {v2 * h2} miles.",
             f"Total: {v1 * h1} + {v2 * h2} = {v1 * h1 + v2 * h2} miles."]
    return q, steps, v1 * h1 + v2 * h2


def _wages(rng, name, he, his):
    rate, hours, days = rng.randint(8, 20), rng.randint(3, 8), rng.randint(2, 6)
    bonus = rng.choice([10, 15, 20, 25, 50])
    daily = rate * hours
    q = (f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days. "
         f"{he.capitalize()} also gets a ${bonus} bonus. How many dollars does {name} earn in total?")
    steps = [f"Each day {name} earns {rate} * {hours} = ${daily}.",
             f"In {days} days that is {daily} * {days} = ${daily * days}.",
             f"With the bonus: {daily * days} + {bonus} = ${daily * days + bonus}."]
    return q, steps, daily * days + bonus


def _ages(rng, name, he, his):
    age, gap, years = rng.randint(5, 15), rng.randint(2, 9), rng.randint(2, 10)
    sister = age + gap
    total = (age + years) + (sister + years)
    q = (f"{name} is {age} years old. {his.capitalize()} sister is {gap} years older. "
         f"In {years} years, what will be the sum of their ages?")
    steps = [f"The sister is {age} + {gap} = {sister} years old.",
             f"In {years} years {name} will be {age} + {years} = {age + years}.",
             f"The sister will be {sister} + {years} = {sister + years}.",
             f"The sum is {age + years} + {sister + years} = {total}."]
    return q, steps, total


def _garden(rng, name, he, his):
    rows, per_row, dead, extra = rng.randint(3, 9), rng.randint(4, 12), rng.randint(1, 5), rng.randint(2, 15)
    planted = rows * per_row
    q = (f"{name} plants {rows} rows of tulips with {per_row} tulips in each row. {dead} tulips do not "
         f"grow, and later {he} plants {extra} more. How many tulips are growing now?")
    steps = [f"{name} plants {rows} * {per_row} = {planted} tulips.",
             f"Of these, {planted} - {dead} = {planted - dead} grow.",
             f"After planting more: {planted - dead} + {extra} = {planted - dead + extra}."]
    return q, steps, planted - dead + extra


OFFLINE_TEMPLATES = (_collect, _change, _savings, _sharing, _reading, _store, _trip, _wages, _ages, _garden)


def offline_problems(n: int = 200, seed: int = 0) -> list[dict]:
    r"""`n` GSM8K-like word problems (2-4 arithmetic steps, positive integer answers) with a worked
    solution ending in \boxed{answer}. Problem i depends only on (seed, i), so a longer list
    extends a shorter one; the template cycles with i so that any 10 consecutive rows use all."""
    problems = []
    for i in range(n):
        rng = random.Random(f"pns-mini/offline/{seed}/{i}")  # str seeds hash stably across runs
        name, he, his = rng.choice(_PEOPLE)
        question, steps, answer = OFFLINE_TEMPLATES[i % len(OFFLINE_TEMPLATES)](rng, name, he, his)
        assert isinstance(answer, int) and answer > 0, (i, question, answer)
        solution = "\n".join(steps + [final_answer_sentence(str(answer))])
        problems.append({"id": f"offline/{i}", "question": question, "gold": str(answer), "solution": solution})
    return problems


# ---------------------------------------------------------------------------------------------
# One entry point for every script.
# ---------------------------------------------------------------------------------------------
def load_problems_jsonl(path: str | os.PathLike) -> list[dict]:
    """A user's JSONL of {id, question, gold[, solution]} rows: `id` a string or an integer, the
    rest non-empty strings; other fields are ignored and ids must be unique. A bad row raises
    DataError("FILE:LINE: field ...")."""
    path = Path(path)
    problems, first_line = [], {}
    for row in read_jsonl(path, required=("id", "question", "gold"), line_key="line"):
        where, pid = f"{path}:{row['line']}", row["id"]
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid).strip() == "":
            raise DataError(f"{where}: field 'id' must be a non-empty string or an integer, got {pid!r:.60}")
        for key in ("question", "gold", "solution"):
            if key in row and (not isinstance(row[key], str) or not row[key].strip()):
                raise DataError(f"{where}: field '{key}' must be a non-empty string, got {row[key]!r:.60}")
        problem = {"id": str(pid), "question": row["question"], "gold": row["gold"].strip()}
        if "solution" in row:
            problem["solution"] = row["solution"]
        if problem["id"] in first_line:
            raise DataError(f"{where}: field 'id' {problem['id']!r} repeats line {first_line[problem['id']]}")
        first_line[problem["id"]] = row["line"]
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems (the file is empty); expected one JSON object a line with "
                        f"'id', 'question', 'gold'")
    return problems


def load_problems(source: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                  seed: int = 0) -> list[dict]:
    """Problems as {id, question, gold} dicts, plus "solution" where the source has a worked one
    (offline, gsm8k, gsm8k_train, math500, minerva_math, a JSONL that gives it).

    source: "offline" (generated, no files), a benchmark name (see ALL_BENCHMARKS), "gsm8k_train",
        or a path to a JSONL of {id, question, gold} rows.
    data_dir: folder holding benchmarks/ and train/ (default: $PNS_MINI_DATA, ../shared/data, ./data).
    limit: the first `limit` problems, in file order; None: all (200 for "offline").
    seed: only for "offline": which generated problems."""
    if limit is not None and limit < 0:
        raise DataError(f"--limit must be >= 0 or none, got {limit}")
    if source == "offline":
        return offline_problems(200 if limit is None else limit, seed)
    if source in BENCHMARKS or source == GSM8K_TRAIN.name:
        problems = load_benchmark(source, data_dir)
    elif source.endswith(".jsonl") or Path(source).is_file():
        problems = load_problems_jsonl(source)
    else:
        raise DataError(f"unknown problem source {source!r}; accepted: offline, {', '.join(ALL_BENCHMARKS)}, "
                        f"{GSM8K_TRAIN.name}, or a path to a .jsonl file of {{id, question, gold}} rows")
    return problems if limit is None else problems[:limit]
