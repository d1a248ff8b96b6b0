r"""Stage 2 of PNS: per problem, a preference pair of a verified-correct solution (chosen) and the
most plausible verified-wrong one (rejected).

Reads   --problems, --model (the policy), --generator (stage 1's <run>/final), --reward-model, --judge-model
Writes  --output-dir, resumed by rerunning the same command (`done_ids`): pairs.jsonl (a pair a row as TRL's
        DPOTrainer reads it, `messages`, + answers, scores, rank), skipped.jsonl (why a problem has no pair),
        samples.jsonl (every candidate, checked and scored), config.json, metrics.jsonl (running totals per
        batch), and report.py's stats.json, report.md, plots/rm_scores.png

Examples
  python synthesize.py --negative-source pns --generator runs/generator/final --problems gsm8k_train --limit 2000
  python synthesize.py --negative-source rejection --problems offline --limit 8 --num-candidates 4 --output-dir runs/rej
  python synthesize.py --stats-only runs/syn-pns/pairs.jsonl,runs/rej/pairs.jsonl --output-dir runs/compare

Method (the rule and thresholds are ours: the paper's are not public)
  1. chosen: `choose`, the reference solution or a correct --model sample, never a fallback;
  2. K candidates from --negative-source: pns = the stage-1 generator, prompted like the policy; rejection =
     --model's samples (the paper's baseline); prompted = `prompted_prompt`; perturbed = `perturb_solution`;
  3. keep: `check_candidates`, stage 1's definition of a negative (well-formed, verified wrong);
  4. select: `select_negatives`, by stage 1's reward (pns, prompted) or at random (rejection, perturbed).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pns_mini import grading, rewards
from pns_mini.config import check_flags, main_guard, save_config
from pns_mini.data import (SYSTEM_PROMPT, append_jsonl, chat_prompt, format_prompt, gsm8k_solution_to_boxed,
                           iter_jsonl_tolerant, last_boxed, load_problems, prompt_messages, prompt_template_hash,
                           repair_torn_tail, write_jsonl)
from pns_mini.report import write_pairs_report

SOURCES = ("pns", "rejection", "prompted", "perturbed")
RANKED = ("pns", "prompted")  # sources whose negatives select_negatives picks by plausibility; the others at random
# A resumed run must make the same kind of pairs: these fields, 4-bit as resolved and the prompts' hash must match
# config.json (--limit, --batch-size and --device may change: problems are seeded one by one).
IDENTITY_FIELDS = ("negative_source", "chosen_source", "model", "generator", "problems", "reward_model", "judge_model",
                   "seed", "pair_format", "num_candidates", "max_completion_length", "temperature", "top_p",
                   "enable_thinking", "pairs_per_problem", "reward_weights", "dtype")
Group = list[tuple[str, bool]]  # one problem's K candidates: (text, truncated)
_NUMBER = re.compile(r"(?<!\d)(?<!\d\.)-?\d+(?:\.\d+)?(?!\.?\d)")  # a number for perturb_solution: "= $38." -> 38
PROMPTED_INSTRUCTION = (
    "Write a step-by-step solution to the problem below that looks careful and convincing but contains one subtle "
    "mistake, such as a small calculation slip or a misread quantity, so that the final answer is wrong. Do not point "
    "out or mention the mistake. Put the final answer within \\boxed{{}}.\n\nProblem: {question}")


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
    """Qwen3-style templates: think in <think>...</think>, answer after (off: empty think block); others ignore it."""
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
        check_flags(self, {1: ("num_candidates", "batch_size", "pairs_per_problem", "max_completion_length", "limit")},
                    {"negative_source": SOURCES, "chosen_source": ("gold", "policy"),
                     "pair_format": ("conversational", "string")})
        if self.negative_source == "pns" and not self.generator:
            raise ValueError("--negative-source pns needs --generator (train_generator.py's <run>/final)")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        rewards.parse_reward_weights(self.reward_weights)


def problem_rng(seed: int, pid: str, what: str) -> random.Random:
    return random.Random(f"synthesize/{seed}/{what}/{pid}")  # str seeds hash stably across runs


def problem_seed(seed: int, pid: str) -> int:
    """A problem's sampling seed, not its batch's: a resumed run (batches shift) samples as an uninterrupted one."""
    return int(hashlib.sha256(f"{seed}/{pid}".encode()).hexdigest()[:8], 16)


# --- Run folder: config guard, resume state, writing ----------------------------------------------
def template_hash() -> str:
    """The prompts' fingerprint (data's template + PROMPTED_INSTRUCTION), kept in config.json."""
    return hashlib.sha256(f"{prompt_template_hash()}\x00{PROMPTED_INSTRUCTION}".encode()).hexdigest()[:12]


def tally(checks: list[dict]) -> dict[str, int]:
    """How many checked candidates (`check_candidates` rows) there are, are well-formed, are verified wrong."""
    return {"candidates": len(checks), "well_formed": sum(c["well_formed"] for c in checks),
            "verified_wrong": sum(c["verified_wrong"] for c in checks)}


def done_ids(out: Path) -> tuple[set[str], int, collections.Counter, dict | None]:
    """(ids done, how many a kill cut and are redone, the running totals, the last metrics row). Done: all its
    pairs or its skip row written; a cut problem's pairs and unfinished problems' samples rows are removed: files
    read as an uninterrupted run's."""
    pairs, skipped, samples, metrics = (out / f"{name}.jsonl" for name in ("pairs", "skipped", "samples", "metrics"))
    for path in (pairs, skipped, samples, metrics):
        repair_torn_tail(path)
    rows, skip_rows, sample_rows = (list(iter_jsonl_tolerant(path)) for path in (pairs, skipped, samples))
    counts = collections.Counter(r["id"] for r in rows)
    partial = {r["id"] for r in rows if counts[r["id"]] != r["num_pairs"]}
    done = set(counts) - partial | {r["id"] for r in skip_rows}
    kept_rows, kept_samples = [r for r in rows if r["id"] not in partial], [r for r in sample_rows if r["id"] in done]
    for path, old, new in ((pairs, rows, kept_rows), (samples, sample_rows, kept_samples)):
        if len(new) < len(old):
            write_jsonl(path, new)
    candidates = [c for r in kept_samples for c in r["candidates"]]
    totals = collections.Counter(pairs=len(kept_rows), skipped=len(skip_rows), **tally(candidates))
    return done, len(partial), totals, next(reversed(list(iter_jsonl_tolerant(metrics))), None)


def messages(cfg: Config, tokenizer, question: str, chosen: str, rejected: str) -> dict:
    """The three fields TRL's DPOTrainer reads, in its conversational (or string) form."""
    if cfg.pair_format == "string":
        return {"prompt": format_prompt(tokenizer, question, enable_thinking=cfg.enable_thinking),
                "chosen": chosen, "rejected": rejected}
    return {"prompt": prompt_messages(question), "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            # TRL's per-row field: its DPOTrainer, and train_dpo.py, template the prompt as we sampled it
            "chat_template_kwargs": {"enable_thinking": cfg.enable_thinking}}


# --- Candidates: sampled (tests replace sample_candidates with a test double), prompted, perturbed ---
def sample_candidates(model, tokenizer, prompts: list[str], cfg: Config, seed: list[int]) -> list[Group]:
    """K completions per prompt, one Group per prompt; seed: one per prompt (problem_seed), its own generator's."""
    from pns_mini.generation import sample
    out = sample(model, tokenizer, prompts, num_samples=cfg.num_candidates, temperature=cfg.temperature,
                 top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length, seed=seed)
    rows = list(zip(out.prompt_index, out.texts, out.truncated.tolist()))
    return [[(text, bool(truncated)) for j, text, truncated in rows if j == i] for i in range(len(prompts))]


def prompted_prompt(tokenizer, question: str, enable_thinking: bool = False) -> str:
    """The `prompted` request after data.prompt_messages' system turn and worked example (the same answer format)."""
    request = {"role": "user", "content": PROMPTED_INSTRUCTION.format(question=question.strip())}
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, prompt_messages(question)[:-1] + [request], enable_thinking=enable_thinking)
    return f"{SYSTEM_PROMPT}\n\n{request['content']}\nSolution: "


def nearby_number(old: str, rng: random.Random) -> str:
    """A plausible wrong value near `old` ("72" -> 62, 70, 71, 73, 74, 82 or 144), same decimals, >= 0 if `old` is."""
    decimals = len(old.split(".")[1]) if "." in old else 0
    value, unit = float(old), 10.0 ** -decimals
    options = {round(value + k * unit, decimals) for k in (-10, -2, -1, 1, 2, 10)} | {round(2 * value, decimals)}
    options = sorted(o for o in options if o != value and (o >= 0 or value < 0))
    return f"{rng.choice(options):.{decimals}f}"


def perturb_solution(text: str, rng: random.Random) -> str | None:
    r"""`text` with the last number of its last \boxed{} replaced by a nearby value, and the same number's last
    mention in the box's line or the 2 lines above it (the step that produces the answer, "48 + 24 = 72") replaced
    too, so the slip looks like an arithmetic error rather than a typo in the box. None when the box holds no number."""
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


def perturbations(text: str, rng: random.Random, k: int) -> Group:
    """Up to k distinct perturbations of a chosen solution, in order, as (text, truncated) candidates."""
    return [(t, False) for t in dict.fromkeys(perturb_solution(text, rng) for _ in range(k)) if t is not None]


# --- The method's choices, one function each: chosen, candidates' check, the pair-selection rule ---
def reference_solution(problem: dict) -> str | None:
    r"""The problem's worked solution with a final \boxed{}: GSM8K's `#### N` form is converted ("The final answer
    is \boxed{N}"); offline and MATH-style solutions already end in a box. None when there is none."""
    solution = problem.get("solution") or ""
    if last_boxed(solution) is None and "#### " in solution:
        solution = gsm8k_solution_to_boxed(solution)
    return solution if last_boxed(solution) is not None else None


def choose(problem: dict, cfg: Config, policy_group: Group | None) -> tuple[str | None, str]:
    """(the chosen solution, "") or (None, why the problem gets no pair). gold: the reference solution if well-formed
    and correct by the checker; policy: the first well-formed, correct one of --model's K samples. Never a fallback."""
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


def check_candidates(group: Group, gold: str) -> list[dict]:
    """One row per candidate, checked by rewards.negative_check: the one definition of a negative, as stage 1's."""
    checked = [(text, truncated, *rewards.negative_check(text, truncated, gold)) for text, truncated in group]
    return [{"text": text, "truncated": truncated, "well_formed": ok, "format_reason": reason,
             "verified_wrong": ok and graded.verdict == "wrong"} for text, truncated, ok, reason, graded in checked]


def select_negatives(source: str, checks: list[dict], n: int, rng: random.Random) -> list[int]:
    """The pair-selection rule: indices of at most n verified-wrong candidates of distinct texts (the first of
    equal ones: no pair twice), best first, that become the problem's rejected sides. RANKED (pns, prompted): by stage 1's reward `total` (all that qualify have format =
    accuracy = 1: the weighted RM + judge score), ties in sample order. rejection, perturbed: at random (rng seeded
    per problem): the paper's rejection-sampled negative is any wrong sample; ranking it would bias its RM score."""
    texts = [c["text"] if c["verified_wrong"] else None for c in checks]
    kept = [j for j, t in enumerate(texts) if t is not None and texts.index(t) == j]  # the first of equal texts
    if source in RANKED:
        return sorted(kept, key=lambda j: -(checks[j]["total"] or 0.0))[:n]
    return rng.sample(kept, min(n, len(kept)))


def main(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    if cfg.stats_only:
        return write_pairs_report(out, [Path(p.strip()) for p in cfg.stats_only.split(",") if p.strip()])
    from pns_mini.modeling import load_model_and_tokenizer, reference_model, resolve_loading, resolve_model_path
    from pns_mini.runs import check_same_settings, remove_stale_temps
    from pns_mini.scorers import build_scorers, sigmoid

    problems = load_problems(cfg.problems, cfg.data_dir, cfg.limit)  # bad input fails before any file is written
    # resolved by device; a resumed run must load the models as the run it continues did
    load_in_4bit = resolve_loading(cfg.device, cfg.dtype, cfg.load_in_4bit)["load_in_4bit"]
    settings = {**{k: getattr(cfg, k) for k in IDENTITY_FIELDS}, "load_in_4bit": load_in_4bit}
    check_same_settings(out / "config.json", {**settings, "prompt_template": template_hash()}, "pairs")
    remove_stale_temps(out)
    done, redone, totals, last_row = done_ids(out)
    todo = [p for p in problems if p["id"] not in done]
    print(f"{len(problems)} problems, {len(problems) - len(todo)} already done"
          + (f" ({redone} cut by an interrupt are done again)" if redone else ""), file=sys.stderr)
    batches = range(0, len(problems), cfg.batch_size)  # fixed batches: a rerun finds the same
    if not todo and (out / "pairs.jsonl").exists():  # nothing to sample: no model load
        if any((last_row or {}).get(k) != v for k, v in totals.items()):  # killed before the last metrics row
            append_jsonl(out / "metrics.jsonl", {"batch": len(batches) - 1, "problems": len(problems[batches[-1]:]),
                                                 **totals, "seconds": 0.0})
        return finish(out)
    weights = rewards.parse_reward_weights(cfg.reward_weights)
    loading = dict(load_in_4bit=load_in_4bit, device=cfg.device, dtype=cfg.dtype)

    # --- models: the generator (pns) and the policy, from one copy of the base when the generator is an adapter on it
    pns = cfg.negative_source == "pns"
    generator, gen_tok = load_model_and_tokenizer(cfg.generator, **loading) if pns else (None, None)
    gen_base, gen_adapter = resolve_model_path(cfg.generator) if pns else (None, None)
    shares_base = gen_adapter is not None and gen_base == resolve_model_path(cfg.model)[0]
    policy, tok = (generator, gen_tok) if shares_base else load_model_and_tokenizer(cfg.model, **loading)
    rm_scorer, judge_scorer = build_scorers(policy, tok, reward_model=cfg.reward_model, judge_model=cfg.judge_model,
                                            base_model_name=cfg.model, **loading)
    out.mkdir(parents=True, exist_ok=True)
    # all loaded: the folder is this run's (load_in_4bit as resolved)
    save_config(cfg, out / "config.json", prompt_template=template_hash(), load_in_4bit=load_in_4bit)
    (out / "pairs.jsonl").touch()  # exists from the start, so --stats-only works on a run in progress

    def draw(batch: list[dict], on_generator: bool = False, prompt_of=format_prompt) -> list[Group]:
        """K samples per problem of the generator or of the policy, seeded per problem (`problem_seed`)."""
        model, t = (generator, gen_tok) if on_generator else (policy, tok)
        prompts = [prompt_of(t, p["question"], enable_thinking=cfg.enable_thinking) for p in batch]
        with reference_model(policy) if shares_base and not on_generator else contextlib.nullcontext():  # adapter off
            # the pns and prompted negatives draw a stream of their own, not the policy samples' (a chosen source)
            tag = "/negatives" if on_generator or prompt_of is not format_prompt else ""
            return sample_candidates(model, t, prompts, cfg, [problem_seed(cfg.seed, p["id"] + tag) for p in batch])

    ranked = cfg.negative_source in RANKED  # the rule ranks by scores; the other sources pick before scoring
    pick = lambda p, checks: select_negatives(cfg.negative_source, checks[p["id"]], cfg.pairs_per_problem,  # noqa: E731
                                              problem_rng(cfg.seed, p["id"], "pick"))
    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", dynamic_ncols=True,
               desc=f"synthesize {cfg.negative_source}")
    for b, start in enumerate(batches):
        t0 = time.time()
        # the whole batch, as an uninterrupted run has it (the same padding, so the same samples and scores);
        # the problems a kill left done are not written again
        batch = problems[start:start + cfg.batch_size]
        new = [p for p in batch if p["id"] not in done]
        if not new:
            continue

        # ===== chosen: verified-correct reference solution or policy sample =====================
        sampled = cfg.chosen_source == "policy" or cfg.negative_source == "rejection"
        policy_groups = dict(zip([p["id"] for p in batch], draw(batch))) if sampled else {}
        chosen, why = {}, {}  # id -> chosen text; id -> why the problem gives no pair
        for p in batch:
            chosen[p["id"]], why[p["id"]] = choose(p, cfg, policy_groups.get(p["id"]))
        live = [p for p in batch if chosen[p["id"]] is not None]

        # ===== rollout and filter: K candidates per problem, each checked ======================
        if cfg.negative_source == "rejection":  # the very samples that were tried as the policy chosen
            groups = [policy_groups[p["id"]] for p in live]
        elif cfg.negative_source == "perturbed":
            groups = [perturbations(chosen[p["id"]], problem_rng(cfg.seed, p["id"], "perturb"), cfg.num_candidates)
                      for p in live]
        else:  # pns or prompted; no sampling call for an empty batch
            groups = draw(live, on_generator=pns, prompt_of=format_prompt if pns else prompted_prompt) if live else []
        checks = {p["id"]: check_candidates(g, p["gold"]) for p, g in zip(live, groups)}
        why.update({p["id"]: "no_wellformed_wrong_candidate" if checks[p["id"]] else "no_number_to_perturb"
                    for p in live if not any(c["verified_wrong"] for c in checks[p["id"]])})

        # ===== plausibility: stage 1's reward parts of the candidates to rank (or the random picks) and the chosen ====
        live = [p for p in live if not why[p["id"]]]
        picks = {} if ranked else {p["id"]: pick(p, checks) for p in live}  # a random pick needs no scores
        chosen_scores = {p["id"]: {} for p in live}
        scored = [(p, c["text"], c) for p in live for j, c in enumerate(checks[p["id"]])
                  if c["verified_wrong"] and (ranked or j in picks[p["id"]])] \
            + [(p, chosen[p["id"]], chosen_scores[p["id"]]) for p in live]  # (problem, text, where its scores go)
        questions, texts = [p["question"] for p, _, _ in scored], [text for _, text, _ in scored]
        raw = rm_scorer.raw(questions, texts)  # one pass: the raw logit, and sigmoid(raw) as RewardModelScorer's
        parts = rewards.score_completions(texts, [p["gold"] for p, _, _ in scored], [False] * len(texts),
                                          [sigmoid(r) for r in raw], judge_scorer(questions, texts), weights=weights)
        for (_, _, scores), part, r in zip(scored, parts, raw):
            scores.update(part, rm_raw=r)
        if ranked:  # the rule ranks by those scores
            picks = {p["id"]: pick(p, checks) for p in live}

        # ===== write: samples log, then the pairs (the selection rule) or the skip reason, per problem ====
        for p in new:
            group = checks.get(p["id"], [])
            counts = tally(group)
            totals.update(counts)  # Counter.update adds: the running totals of metrics.jsonl
            append_jsonl(out / "samples.jsonl", {"id": p["id"], "source": cfg.negative_source, "gold": p["gold"],
                                                 "chosen": chosen[p["id"]], "candidates": group})
            if why[p["id"]]:
                append_jsonl(out / "skipped.jsonl", {"id": p["id"], "source": cfg.negative_source,
                                                     "reason": why[p["id"]], "gold": p["gold"], **counts})
                totals["skipped"] += 1
                continue
            text, cs = chosen[p["id"]], chosen_scores[p["id"]]
            for rank, c in enumerate([group[j] for j in picks[p["id"]]]):
                append_jsonl(out / "pairs.jsonl", {
                    "id": p["id"], **messages(cfg, tok, p["question"], text, c["text"]), "gold": p["gold"],
                    "chosen_answer": grading.extract_answer(text), "rejected_answer": c["answer"],
                    **{f"rejected_{k}": c[k] for k in (*rewards.COMPONENTS, "total")}, "rm_raw_chosen": cs["rm_raw"],
                    "rm_raw_rejected": c["rm_raw"], "judge_chosen": cs["judge"], "judge_rejected": c["judge"],
                    "chosen_tokens": n_tokens(text), "rejected_tokens": n_tokens(c["text"]), "rank": rank,
                    "num_pairs": len(picks[p["id"]]), "candidates": counts["candidates"],
                    "qualified": counts["verified_wrong"],
                    "source": cfg.negative_source, "chosen_source": cfg.chosen_source, "generator": cfg.generator,
                    "model": cfg.model, "seed": cfg.seed})
                totals["pairs"] += 1
        append_jsonl(out / "metrics.jsonl", {"batch": b, "problems": len(batch), **totals,
                                             "seconds": round(time.time() - t0, 2)})
        bar.update(len(new))
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
