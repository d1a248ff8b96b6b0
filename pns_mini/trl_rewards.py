"""TRL-style reward functions of the PNS composite, for the scale-out path only (docs/scale-out.md):
trl.GRPOTrainer(reward_funcs=..., args=GRPOConfig(reward_weights=...)). The reward itself is
defined in rewards.py; this module only adapts its inputs (TRL's prompts, completions and dataset
columns) and outputs (one list of floats per function).

Signature f(prompts, completions, **kwargs) -> list[float]; kwargs carry the dataset columns:
`gold` (required), `question` (optional, else read from the prompt), `truncated` (optional; TRL
does not say which completions hit the length limit, so without it none is treated as
truncated: pair with GRPOConfig(mask_truncated_completions=True)).
"""
from __future__ import annotations

from pns_mini.data import ANSWER_INSTRUCTION
from pns_mini.rewards import COMPONENTS, MALFORMED_PENALTY, resolve_weights, score_completions


def _completion_text(completion) -> str:
    """A TRL completion: a string, or chat messages [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


def _question_text(prompt) -> str:
    """The question from a TRL prompt: the last user message (or the string), with our answer
    instruction removed. A chat-templated string prompt is returned whole: pass a `question` column."""
    if not isinstance(prompt, str):
        prompt = [m for m in prompt if m.get("role") == "user"][-1]["content"]
    return prompt.strip().removesuffix(ANSWER_INSTRUCTION).strip()


def _trl_columns(prompts, completions, kwargs) -> tuple[list[str], list[str], list[str], list[bool]]:
    if "gold" not in kwargs:
        raise ValueError("the reward functions need a 'gold' dataset column (the final answer of each problem)")
    texts = [_completion_text(c) for c in completions]
    questions = list(kwargs["question"]) if "question" in kwargs else [_question_text(p) for p in prompts]
    truncated = [bool(t) for t in kwargs.get("truncated", [False] * len(texts))]
    return questions, texts, list(kwargs["gold"]), truncated


def _named(fn, name: str):
    fn.__name__ = fn.__qualname__ = name  # TRL logs each reward function under its __name__
    return fn


def trl_reward_functions(rm_scorer=None, judge_scorer=None, weights: dict[str, float] | None = None, *,
                         composite: bool = False, **format_kw) -> tuple[list, list[float]]:
    """([format, accuracy, reward_model, judge] callables, their weights in that order); with
    composite=True, ([pns_composite_reward], [1.0]) instead (see `make_pns_composite_reward`).

    Each callable returns ONE ungated component per completion (TRL logs them as
    rewards/<name>/mean). TRL then sums them weighted, WITHOUT our gating: a malformed completion
    scores 0 + its rm/judge terms instead of -1, and a correct, plausible solution can outscore a
    wrong, implausible one. Use `make_pns_composite_reward` (one callable, weight 1.0) for the
    gated reward of this module. rm_scorer / judge_scorer: callables (questions, completions) ->
    normalised scores, e.g. scorers.RewardModelScorer / JudgeScorer; None gives zeros."""
    if composite:
        return [make_pns_composite_reward(rm_scorer, judge_scorer, weights, **format_kw)], [1.0]
    w = resolve_weights(weights)

    last = {}  # TRL calls `format`, then `accuracy`, on the same batch: grade it once for both

    def rows(prompts, completions, kwargs):
        _, texts, golds, truncated = _trl_columns(prompts, completions, kwargs)
        key = (tuple(texts), tuple(golds), tuple(truncated))
        if last.get("key") != key:
            last.update(key=key, rows=score_completions(texts, golds, truncated, None, None, **format_kw))
        return last["rows"]

    def model_scores(scorer, prompts, completions, kwargs):
        questions, texts, _, _ = _trl_columns(prompts, completions, kwargs)
        return [0.0] * len(texts) if scorer is None else [float(s) for s in scorer(questions, texts)]

    funcs = [
        _named(lambda prompts, completions, **kw: [r["format"] for r in rows(prompts, completions, kw)], "format"),
        _named(lambda prompts, completions, **kw: [r["accuracy"] for r in rows(prompts, completions, kw)], "accuracy"),
        _named(lambda prompts, completions, **kw: model_scores(rm_scorer, prompts, completions, kw), "reward_model"),
        _named(lambda prompts, completions, **kw: model_scores(judge_scorer, prompts, completions, kw), "judge"),
    ]
    return funcs, [w[name] for name in COMPONENTS]


def make_pns_composite_reward(rm_scorer=None, judge_scorer=None, weights: dict[str, float] | None = None, *,
                              malformed_penalty: float = MALFORMED_PENALTY, plausibility_only_when_wrong: bool = True,
                              **format_kw):
    """One TRL reward function, named `pns_composite_reward`, returning `score_completions`'
    gated totals. The model scorers run only on the completions whose plausibility counts
    (well-formed and verified wrong, unless plausibility_only_when_wrong=False): the others'
    scores could not change their reward. Use it with reward_weights=[1.0]."""
    w = resolve_weights(weights)

    def pns_composite_reward(prompts, completions, **kwargs) -> list[float]:
        questions, texts, golds, truncated = _trl_columns(prompts, completions, kwargs)
        rows = score_completions(texts, golds, truncated, rm_scorer, judge_scorer, w, questions=questions,
                                 malformed_penalty=malformed_penalty,
                                 plausibility_only_when_wrong=plausibility_only_when_wrong, **format_kw)
        return [r["total"] for r in rows]

    return pns_composite_reward
