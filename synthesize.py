r"""Stage 2 of PNS: turn negative samples into preference pairs. For every problem, `chosen` is a
verified-correct solution and `rejected` the most plausible verified-wrong one.

Reads   --problems (offline | gsm8k_train | a benchmark | a JSONL of {id, question, gold[, solution]}),
        --model (policy: rejection and prompted negatives, policy chosen, the scorers' base),
        --generator (stage 1's <run>/final adapter), --reward-model / --judge-model (stage 1's scorers)
Writes  (--output-dir; rerunning the same command resumes: a problem is done once all its pairs or
        its skip row are written, so a kill -9 loses at most the problem in flight)
  pairs.jsonl    one pair per row as TRL's DPOTrainer reads it (prompt = data.prompt_messages,
                 chosen / rejected = [assistant message]; --pair-format string: templated prompt and
                 plain texts) plus metadata: id, gold, answers, rejected_{components,total},
                 rm_raw_{chosen,rejected}, judge_{chosen,rejected}, token counts, rank, source...
  skipped.jsonl  one row per problem without a pair and why (`choose`, no_wellformed_wrong_candidate,
                 no_number_to_perturb);  samples.jsonl: every candidate with its checks and scores
  config.json, metrics.jsonl (running totals per batch), stats.json, report.md, plots/rm_scores.png

Examples
  python synthesize.py --negative-source pns --generator runs/generator/final --problems gsm8k_train --limit 2000
  python synthesize.py --negative-source rejection --problems offline --limit 8 --num-candidates 4 \
      --max-completion-length 256 --output-dir runs/syn-rejection
  python synthesize.py --stats-only runs/syn-pns/pairs.jsonl,runs/syn-rejection/pairs.jsonl --output-dir runs/compare

Method (the paper's exact selection rule and thresholds are not public; these are ours)
  1. Chosen (`choose`): the reference solution in our answer format (GSM8K `#### N` -> "The final
     answer is \boxed{N}") or the first correct policy sample; checked, never a fallback.
  2. Candidates, K per problem: pns = the stage-1 generator, prompted like the policy; rejection =
     --model's own samples (the paper's baseline); prompted = --model asked (PROMPTED_INSTRUCTION)
     for a subtly wrong solution; perturbed = the chosen with its final number moved (no sampling).
  3. Keep (`check_candidates`): rewards.negative_check, the same definition of a negative as
     stage 1's reward: well-formed, verified wrong, one real wrong answer.
  4. Select (`select_negatives`): pns / prompted by stage 1's composite reward, rejection /
     perturbed at random; the best --pairs-per-problem are paired with the same chosen.
  Stats (report.py, also --stats-only): per source, pairs / problems, the share of candidates kept,
  the RM raw score of rejected vs chosen and the share of pairs where it is at least as high (the
  paper's Fig. 1: plausible negative +3.34, correct +3.21, rejection-sampled -3.13), judge score,
  tokens, and word-level similarity of the two sides.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pns_mini import grading, rewards
from pns_mini.report import write_pairs_report
from pns_mini.config import main_guard, save_config
from pns_mini.data import (SYSTEM_PROMPT, append_jsonl, chat_prompt, format_prompt,
                           gsm8k_solution_to_boxed, iter_jsonl_tolerant, last_boxed, load_problems,
                           prompt_messages, prompt_template_hash, repair_torn_tail)

SOURCES = ("pns", "rejection", "prompted", "perturbed")
# A resumed run must make the same kind of pairs: these fields (and the prompt template's hash)
# must match the saved config.json.
IDENTITY_FIELDS = ("negative_source", "chosen_source", "model", "generator", "problems",
                   "reward_model", "judge_model", "seed", "pair_format")
PROMPTED_INSTRUCTION = (
    "Write a step-by-step solution to the problem below that looks careful and convincing but "
    "contains one subtle mistake, such as a small calculation slip or a misread quantity, so that "
    "the final answer is wrong. Do not point out or mention the mistake. Put the final answer "
    "within \\boxed{{}}.\n\nProblem: {question}")


@dataclass
class Config:
    model: str = "smollm2-135m"
    """Policy / base instruct model: Hub id, folder or alias (rejection, prompted, policy chosen, scorers)."""
    generator: str | None = None
    """Stage-1 negative generator: train_generator.py's <run>/final adapter folder, or a model (needed by pns)."""
    negative_source: str = "pns"
    """Where negatives come from: pns | rejection | prompted | perturbed."""
    chosen_source: str = "gold"
    """Where the correct answer comes from: gold (reference solution) | policy (a correct --model sample)."""
    problems: str = "gsm8k_train"
    """offline | gsm8k_train | a benchmark name | a JSONL path of {id, question, gold[, solution]}."""
    data_dir: str | None = None
    """Folder with benchmarks/ and train/ (default: $PNS_MINI_DATA, ../shared/data, ./data)."""
    limit: int | None = None
    """Use the first N problems (none = all; offline: 200)."""
    output_dir: str = "runs/synthesize"
    """Run folder (pairs.jsonl, skipped.jsonl, stats); an existing one is resumed."""
    seed: int = 0
    """Seed for sampling, random picks and perturbations (per problem, so resume is reproducible)."""
    num_candidates: int = 8
    """Candidates sampled per problem, K (4-16; perturbed: distinct perturbations tried)."""
    batch_size: int = 4
    """Problems per sampling call (batch_size * num_candidates rows decode together)."""
    max_completion_length: int = 512
    """Max new tokens per sampled solution (256-1024); a truncated candidate is never kept."""
    temperature: float = 1.0
    """Sampling temperature (0.6-1.0; 0 = greedy, which makes K identical candidates)."""
    top_p: float = 1.0
    """Nucleus sampling mass (0.9-1.0)."""
    enable_thinking: bool = False
    """Qwen3-style templates: the model writes <think>...</think> first and the answer is read
    after it; off = the template's empty think block, no thinking. Other templates ignore it."""
    pairs_per_problem: int = 1
    """Rejected candidates kept per problem (1-4), each paired with the same chosen."""
    reward_model: str | None = None
    """Classifier reward model (train_reward_model.py output); none = a Yes/No verifier prompt on --model."""
    judge_model: str | None = None
    """LLM judge of the reasoning (scorers.JUDGE_RUBRIC); none = --model itself."""
    reward_weights: str | None = None
    """Ranking weights, as stage 1's: 'reward_model=1,judge=0' or '0.5,1,1,1' (none = the defaults)."""
    pair_format: str = "conversational"
    """conversational (message lists, TRL's default) | string (chat-templated prompt, plain answers)."""
    stats_only: str | None = None
    """Only compute stats for existing pairs files (comma list); writes to --output-dir."""
    load_in_4bit: bool | None = None
    """4-bit NF4 models (bitsandbytes). Default: on CUDA yes, on CPU no (slower there), as every script."""
    device: str = "auto"
    """auto | cpu | cuda."""
    dtype: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16."""

    def __post_init__(self):
        if self.stats_only:
            return
        if self.negative_source not in SOURCES:
            raise ValueError(f"--negative-source {self.negative_source!r}: accepted {', '.join(SOURCES)}")
        if self.chosen_source not in ("gold", "policy"):
            raise ValueError(f"--chosen-source {self.chosen_source!r}: accepted gold, policy")
        if self.negative_source == "pns" and not self.generator:
            raise ValueError("--negative-source pns needs --generator (train_generator.py's <run>/final)")
        if self.pair_format not in ("conversational", "string"):
            raise ValueError(f"--pair-format {self.pair_format!r}: accepted conversational, string")
        for name in ("num_candidates", "batch_size", "pairs_per_problem", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 or none, got {self.limit}")
        rewards.parse_reward_weights(self.reward_weights)


def problem_rng(seed: int, pid: str, what: str) -> random.Random:
    return random.Random(f"synthesize/{seed}/{what}/{pid}")  # str seeds hash stably across runs


def problem_seed(seed: int, pid: str) -> int:
    """The sampling seed of one problem: its candidates do not depend on the batch it lands in, so
    a resumed run (whose batches shift) samples what an uninterrupted one would."""
    return int(hashlib.sha256(f"{seed}/{pid}".encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------------------------------------
# Chosen: a reference solution in our answer format, or a correct policy sample
# ---------------------------------------------------------------------------------------------
def reference_solution(problem: dict) -> str | None:
    r"""The problem's worked solution with a final \boxed{}: GSM8K's `#### N` form is converted;
    offline and MATH-style solutions already end in a box. None when there is none."""
    solution = problem.get("solution")
    if not solution:
        return None
    if last_boxed(solution) is None and "#### " in solution:
        return gsm8k_solution_to_boxed(solution)
    return solution if last_boxed(solution) is not None else None


# ---------------------------------------------------------------------------------------------
# Perturbed negatives: move the final number to a nearby value, in the box and where it is made
# ---------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"(?<!\d)(?<!\d\.)-?\d+(?:\.\d+)?(?!\.?\d)")  # "= $38." -> 38; "3.5" whole


def nearby_number(old: str, rng: random.Random) -> str:
    """A plausible wrong value near `old` ("72" -> one of 62, 70, 71, 73, 74, 82, 144), same
    number of decimals, never negative unless `old` is."""
    decimals = len(old.split(".")[1]) if "." in old else 0
    value, unit = float(old), 10.0 ** -decimals
    options = {round(value + k * unit, decimals) for k in (-10, -2, -1, 1, 2, 10)} | {round(2 * value, decimals)}
    options = sorted(o for o in options if o != value and (o >= 0 or value < 0))
    return f"{rng.choice(options):.{decimals}f}"


def perturb_solution(text: str, rng: random.Random) -> str | None:
    r"""`text` with the last number of its last \boxed{} replaced by a nearby value, and the same
    number's last mention in the box's line or the 2 lines above it (the step that produces the
    answer, "48 + 24 = 72") replaced too, so the slip looks like an arithmetic error rather
    than a typo in the box. None when the box holds no number."""
    boxes = grading.find_boxes(text)
    box, _, content = boxes[-1] if boxes else (-1, None, None)
    content = (content or "").strip()
    numbers = list(_NUMBER.finditer(content))
    if not numbers:
        return None
    old, new = numbers[-1].group(), nearby_number(numbers[-1].group(), rng)
    inner = text.index(content, box)  # where the (stripped) box content starts
    text = text[:inner + numbers[-1].start()] + new + text[inner + numbers[-1].end():]
    head = text[:box]
    window = len(head) - len("\n".join(head.split("\n")[-3:]))  # box line + 2 lines above
    hits = [m for m in _NUMBER.finditer(head) if m.group() == old and m.start() >= window]
    if hits:
        text = text[:hits[-1].start()] + new + text[hits[-1].end():]
    return text


def perturbations(text: str, rng: random.Random, k: int) -> list[tuple[str, bool]]:
    """Up to k distinct perturbations of a chosen solution, in order, as (text, truncated) candidates."""
    return [(t, False) for t in dict.fromkeys(perturb_solution(text, rng) for _ in range(k)) if t is not None]


# ---------------------------------------------------------------------------------------------
# Run folder: config guard, resume state, writing
# ---------------------------------------------------------------------------------------------
def template_hash() -> str:
    """The prompts' fingerprint (data's template + PROMPTED_INSTRUCTION), kept in config.json."""
    return hashlib.sha256(f"{prompt_template_hash()}\x00{PROMPTED_INSTRUCTION}".encode()).hexdigest()[:12]


def done_ids(out: Path) -> tuple[set[str], int, dict]:
    """(ids already finished, how many were cut and are redone, the running totals so far). A
    problem is done when all its pairs, or its skip row, are written. A problem whose pairs were cut
    by a kill is removed from pairs.jsonl, and every unfinished problem's row from samples.jsonl, so
    both read as an uninterrupted run's; the totals (metrics.jsonl) are counted from them."""
    pairs, skipped, samples = out / "pairs.jsonl", out / "skipped.jsonl", out / "samples.jsonl"
    for path in (pairs, skipped, samples, out / "metrics.jsonl"):
        repair_torn_tail(path)
    rows = list(iter_jsonl_tolerant(pairs))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    partial = {i for i, r in ((r["id"], r) for r in rows) if counts[i] != r["num_pairs"]}
    skip_rows = list(iter_jsonl_tolerant(skipped))
    done = set(counts) - partial | {r["id"] for r in skip_rows}
    sample_rows = list(iter_jsonl_tolerant(samples))
    kept_samples = [r for r in sample_rows if r["id"] in done]
    for path, old, new in ((pairs, rows, [r for r in rows if r["id"] not in partial]), (samples, sample_rows, kept_samples)):
        if len(new) < len(old):  # rewrite without them (temp file + rename: never a half-written file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            tmp.replace(path)
    candidates = [c for r in kept_samples for c in r["candidates"]]
    totals = {"pairs": len(rows) - sum(counts[i] for i in partial), "skipped": len(skip_rows),
              "candidates": len(candidates), "well_formed": sum(c["well_formed"] for c in candidates),
              "verified_wrong": sum(c["verified_wrong"] for c in candidates)}
    return done, len(partial), totals


def messages(cfg: Config, tokenizer, question: str, chosen: str, rejected: str) -> dict:
    """The three fields TRL's DPOTrainer reads, in its conversational (or string) form."""
    if cfg.pair_format == "string":
        return {"prompt": format_prompt(tokenizer, question, enable_thinking=cfg.enable_thinking),
                "chosen": chosen, "rejected": rejected}
    return {"prompt": prompt_messages(question),
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            # TRL's per-row field: its DPOTrainer, and train_dpo.py, template the prompt as we sampled it
            "chat_template_kwargs": {"enable_thinking": cfg.enable_thinking}}


# ---------------------------------------------------------------------------------------------
# Sampling (tests replace this one function with a test double)
# ---------------------------------------------------------------------------------------------
def sample_candidates(model, tokenizer, prompts: list[str], cfg: Config, seed: list[int]) -> list[list[tuple[str, bool]]]:
    """K completions per prompt string, grouped per prompt: [[(text, truncated), ...], ...].
    seed: one per prompt (problem_seed); each prompt's rows draw from their own generator."""
    from pns_mini.generation import sample
    out = sample(model, tokenizer, prompts, num_samples=cfg.num_candidates, temperature=cfg.temperature,
                 top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length, seed=seed)
    groups = [[] for _ in prompts]
    for text, truncated, i in zip(out.texts, out.truncated.tolist(), out.prompt_index):
        groups[i].append((text, bool(truncated)))
    return groups


def prompted_prompt(tokenizer, question: str, enable_thinking: bool = False) -> str:
    """The `prompted` baseline's request for a subtly wrong solution: the same system turn and
    worked example as data.prompt_messages (so the answer format is shown alike), then the request."""
    request = {"role": "user", "content": PROMPTED_INSTRUCTION.format(question=question.strip())}
    if getattr(tokenizer, "chat_template", None):
        messages = prompt_messages(question)[:-1] + [request]
        return chat_prompt(tokenizer, messages, enable_thinking=enable_thinking)
    return f"{SYSTEM_PROMPT}\n\n{request['content']}\nSolution: "


# ---------------------------------------------------------------------------------------------
# The method's choices, one function each: chosen, candidates' check, the pair-selection rule
# ---------------------------------------------------------------------------------------------
RANKED = ("pns", "prompted")  # sources whose negatives are picked by plausibility; the others at random


def choose(problem: dict, cfg: Config, policy_group: list[tuple[str, bool]] | None) -> tuple[str | None, str]:
    """(the chosen solution, "") or (None, why the problem gets no pair). --chosen-source gold: the
    reference solution, if it is well-formed and passes the checker; policy: the first well-formed,
    correct sample of --model among its K. Never a fallback to the other source."""
    if cfg.chosen_source == "policy":
        text = next((t for t, truncated in policy_group
                     if rewards.format_check(t, truncated)[0] and grading.is_correct(t, problem["gold"])), None)
        return (text, "") if text is not None else (None, "no_correct_policy_sample")
    text = reference_solution(problem)
    if text is None:
        return None, "no_reference_solution"
    if not rewards.format_check(text, False)[0]:
        return None, "reference_malformed"
    if not grading.is_correct(text, problem["gold"]):
        return None, "reference_fails_checker"
    return text, ""


def check_candidates(group: list[tuple[str, bool]], gold: str) -> list[dict]:
    """One row per candidate: well-formed and verified wrong by rewards.negative_check, the one
    definition of a negative, shared with the stage-1 reward."""
    rows = []
    for text, truncated in group:
        ok, reason, graded = rewards.negative_check(text, truncated, gold)
        rows.append({"text": text, "truncated": truncated, "well_formed": ok, "format_reason": reason,
                     "verified_wrong": ok and graded.verdict == "wrong"})
    return rows


def select_negatives(source: str, checks: list[dict], n: int, rng: random.Random) -> list[int]:
    """The pair-selection rule: indices of the candidates that become a problem's rejected sides,
    at most n, best first. Only verified-wrong candidates qualify.
    pns, prompted: the highest composite reward `total` (stage 1's reward with --reward-weights;
        every qualifying candidate has format = accuracy = 1, so this ranks by the weighted reward-
        model + judge plausibility); ties keep sample order.
    rejection, perturbed: uniformly random qualifying candidates (rng: seeded per problem), never
        ranked: the paper's rejection-sampled negative is just "a wrong sample", and ranking it by
        the reward model would make its reward-model comparison with pns unfair."""
    kept = [j for j, c in enumerate(checks) if c["verified_wrong"]]
    if source in RANKED:
        return sorted(kept, key=lambda j: -(checks[j]["total"] or 0.0))[:n]
    return rng.sample(kept, min(n, len(kept)))


def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    if cfg.stats_only:
        return write_pairs_report(out, [Path(p.strip()) for p in cfg.stats_only.split(",") if p.strip()])
    from pns_mini.modeling import load_model_and_tokenizer, reference_model, resolve_device, resolve_model_path
    from pns_mini.runs import check_same_settings, remove_stale_temps
    from pns_mini.scorers import build_scorers, sigmoid

    problems = load_problems(cfg.problems, cfg.data_dir, cfg.limit)  # bad input fails before any file is written
    check_same_settings(out / "config.json", {**{k: getattr(cfg, k) for k in IDENTITY_FIELDS},
                                              "prompt_template": template_hash()}, "pairs")
    remove_stale_temps(out)
    done, redone, totals = done_ids(out)
    todo = [p for p in problems if p["id"] not in done]
    print(f"{len(problems)} problems, {len(problems) - len(todo)} already done"
          + (f" ({redone} cut by an interrupt are done again)" if redone else ""), file=sys.stderr)
    if not todo and (out / "pairs.jsonl").exists():  # nothing to sample: no model load
        return finish(out)
    weights = rewards.parse_reward_weights(cfg.reward_weights)
    load_in_4bit = cfg.load_in_4bit if cfg.load_in_4bit is not None else resolve_device(cfg.device).type == "cuda"

    # --- models: the generator (pns) and the policy; one copy of the base when the generator
    # is an adapter on --model (the policy is then the generator with its adapter disabled)
    def load(name):
        return load_model_and_tokenizer(name, load_in_4bit=load_in_4bit, device=cfg.device, dtype=cfg.dtype)

    generator = gen_tok = None
    shares_base = False
    if cfg.negative_source == "pns":
        generator, gen_tok = load(cfg.generator)
        gen_base, gen_adapter = resolve_model_path(cfg.generator)
        shares_base = gen_adapter is not None and gen_base == resolve_model_path(cfg.model)[0]
    policy, tok = (generator, gen_tok) if shares_base else load(cfg.model)
    as_policy = (lambda: reference_model(policy)) if shares_base else contextlib.nullcontext
    rm_scorer, judge_scorer = build_scorers(policy, tok, reward_model=cfg.reward_model, judge_model=cfg.judge_model,
                                            base_model_name=cfg.model, device=cfg.device, dtype=cfg.dtype,
                                            load_in_4bit=load_in_4bit)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json", prompt_template=template_hash())  # all loaded: the folder is this run's
    (out / "pairs.jsonl").touch()  # exists from the start, so --stats-only works on a run in progress

    def draw(batch: list[dict], seeds: dict, on_generator: bool = False, prompt_of=None) -> list[list[tuple[str, bool]]]:
        """K samples per problem of the generator or of the policy, seeded per problem."""
        model, t, context = (generator, gen_tok, contextlib.nullcontext) if on_generator else (policy, tok, as_policy)
        prompt_of = prompt_of or (lambda t, q: format_prompt(t, q, enable_thinking=cfg.enable_thinking))
        with context():
            return sample_candidates(model, t, [prompt_of(t, p["question"]) for p in batch], cfg,
                                     [seeds[p["id"]] for p in batch]) if batch else []

    def candidates(batch: list[dict], chosen: dict, seeds: dict, policy_groups) -> list[list[tuple[str, bool]]]:
        """K (text, truncated) candidate negatives per problem of `batch` (all have a chosen)."""
        if cfg.negative_source == "rejection":  # the very samples that were tried as the policy chosen
            return policy_groups
        if cfg.negative_source == "pns":
            return draw(batch, seeds, on_generator=True)
        if cfg.negative_source == "prompted":
            return draw(batch, seeds, prompt_of=lambda t, q: prompted_prompt(t, q, cfg.enable_thinking))
        return [perturbations(chosen[p["id"]], problem_rng(cfg.seed, p["id"], "perturb"), cfg.num_candidates)
                for p in batch]

    def score(questions: list[str], texts: list[str], golds: list[str]) -> list[dict]:
        """Stage 1's reward parts of each text plus rm_raw (one reward-model pass gives the raw
        logit and the normalised sigmoid(raw), as scorers.RewardModelScorer's __call__)."""
        if not texts:
            return []
        raw = rm_scorer.raw(questions, texts)
        parts = rewards.score_completions(texts, golds, [False] * len(texts), [sigmoid(r) for r in raw],
                                          judge_scorer(questions, texts), weights=weights)
        return [{**part, "rm_raw": r} for part, r in zip(parts, raw)]

    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", dynamic_ncols=True,
               desc=f"synthesize {cfg.negative_source}")
    for b, start in enumerate(range(0, len(problems), cfg.batch_size)):  # fixed batches: a rerun finds the same
        t0 = time.time()
        batch = [p for p in problems[start:start + cfg.batch_size] if p["id"] not in done]
        if not batch:
            continue
        seeds = {p["id"]: problem_seed(cfg.seed, p["id"]) for p in batch}  # per problem, not per batch

        # ===== chosen: verified-correct reference solution or policy sample =====================
        sampled = cfg.chosen_source == "policy" or cfg.negative_source == "rejection"
        policy_groups = dict(zip([p["id"] for p in batch], draw(batch, seeds))) if sampled else {}
        chosen, why = {}, {}  # id -> chosen text; id -> why the problem gives no pair
        for p in batch:
            chosen[p["id"]], why[p["id"]] = choose(p, cfg, policy_groups.get(p["id"]))
        live = [p for p in batch if chosen[p["id"]] is not None]

        # ===== rollout and filter: K candidates per problem, each checked ======================
        groups = candidates(live, chosen, seeds, [policy_groups.get(p["id"]) for p in live])
        checks = {p["id"]: check_candidates(g, p["gold"]) for p, g in zip(live, groups)}
        for p in live:
            if not any(c["verified_wrong"] for c in checks[p["id"]]):
                why[p["id"]] = "no_wellformed_wrong_candidate" if checks[p["id"]] else "no_number_to_perturb"

        # ===== plausibility: every qualifying candidate and its chosen, then the selection rule ====
        live = [p for p in live if not why[p["id"]]]
        flat = [(p, c) for p in live for c in checks[p["id"]] if c["verified_wrong"]]
        scored = score([p["question"] for p, _ in flat] + [p["question"] for p in live],
                       [c["text"] for _, c in flat] + [chosen[p["id"]] for p in live],
                       [p["gold"] for p, _ in flat] + [p["gold"] for p in live])
        for (_, c), parts in zip(flat, scored):
            c.update(parts)
        chosen_scores = dict(zip([p["id"] for p in live], scored[len(flat):]))

        # ===== write: samples log, then the pairs or the skip reason, per problem =================
        for p in batch:
            group = checks.get(p["id"], [])
            append_jsonl(out / "samples.jsonl", {"id": p["id"], "source": cfg.negative_source, "gold": p["gold"],
                                                 "chosen": chosen[p["id"]], "candidates": group})
            if why[p["id"]]:
                append_jsonl(out / "skipped.jsonl", {
                    "id": p["id"], "source": cfg.negative_source, "reason": why[p["id"]], "gold": p["gold"],
                    "candidates": len(group), "well_formed": sum(c["well_formed"] for c in group),
                    "verified_wrong": sum(c["verified_wrong"] for c in group)})
                totals["skipped"] += 1
                continue
            picks = select_negatives(cfg.negative_source, group, cfg.pairs_per_problem,
                                     problem_rng(cfg.seed, p["id"], "pick"))
            text, cs = chosen[p["id"]], chosen_scores[p["id"]]
            for rank, j in enumerate(picks):
                c = group[j]
                append_jsonl(out / "pairs.jsonl", {
                    "id": p["id"], **messages(cfg, tok, p["question"], text, c["text"]),
                    "gold": p["gold"], "chosen_answer": grading.extract_answer(text), "rejected_answer": c["answer"],
                    **{f"rejected_{k}": c[k] for k in (*rewards.COMPONENTS, "total")},
                    "rm_raw_chosen": cs["rm_raw"], "rm_raw_rejected": c["rm_raw"],
                    "judge_chosen": cs["judge"], "judge_rejected": c["judge"],
                    "chosen_tokens": n_tokens(text), "rejected_tokens": n_tokens(c["text"]),
                    "rank": rank, "num_pairs": len(picks), "candidates": len(group),
                    "qualified": sum(x["verified_wrong"] for x in group),
                    "source": cfg.negative_source, "chosen_source": cfg.chosen_source, "generator": cfg.generator,
                    "model": cfg.model, "seed": cfg.seed})
                totals["pairs"] += 1

        totals["candidates"] += sum(len(g) for g in checks.values())
        totals["well_formed"] += sum(c["well_formed"] for g in checks.values() for c in g)
        totals["verified_wrong"] += sum(c["verified_wrong"] for g in checks.values() for c in g)
        append_jsonl(out / "metrics.jsonl", {"batch": b, "problems": len(batch), **totals,  # running totals
                                             "seconds": round(time.time() - t0, 2)})
        bar.update(len(batch))
        bar.set_postfix(pairs=totals["pairs"], skipped=totals["skipped"],
                        wrong=f"{totals['verified_wrong']}/{totals['candidates']}")
    bar.close()
    return finish(out)


def finish(out: Path) -> dict:
    stats = write_pairs_report(out, [out / "pairs.jsonl"])
    print(f"done: {out} (pairs {out / 'pairs.jsonl'}, skipped {out / 'skipped.jsonl'}, report {out / 'report.md'})")
    return stats


if __name__ == "__main__":
    main_guard(main, Config, __doc__)
