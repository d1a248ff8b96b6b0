r"""Model-based scores of (question, completion) pairs -> lists of floats in [0, 1].

The negative generator's reward (pns_mini/rewards.py) and the choice of the most plausible
negative (synthesize.py) both need "how convincing does this solution look?". Two signals, as in
the paper: RewardModelScorer (a trained classifier, or the generative Yes/No verifier) and
JudgeScorer (the fixed rubric JUDGE_RUBRIC; it never sees the gold answer). The verifier and the
judge's criteria are short questions after one shared head (problem + solution), prefilled once
per completion by SharedPrefixScorer. build_scorers makes the pair a script uses; its base model
is the policy with the LoRA adapter disabled (`use_reference=True`), not a second copy in memory.
The shared mechanics: batching in `_BatchedScorer._run`, truncation in `encode_with_completions`.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch

from pns_mini.data import chat_prompt, format_prompt, prompt_messages
from pns_mini.generation import left_pad
from pns_mini.modeling import (ModelLoadError, load_model_and_tokenizer, position_ids_from_mask, reference_model,
                               resolve_model_path, sequence_scores)

# ---------------------------------------------------------------------------------------------
# Prompts: the verifier and every judge criterion ask their question AFTER one shared head.
# ---------------------------------------------------------------------------------------------
# The completion goes in through this placeholder, so that the text before it, the completion and
# the text after it are tokenized apart (to cut the completion's start, keeping the template whole).
COMPLETION_SLOT = "\x00PNS-COMPLETION\x00"

SCORING_HEAD = (
    "Below is a math problem and a proposed solution.\n\n"
    "Problem:\n{question}\n\n"
    "Proposed solution:\n{completion}\n\n")
VERIFIER = "verifier"  # the name of the verifier's tail, next to the criteria names
VERIFIER_QUESTION = "Is the proposed solution correct, with the right final answer? Answer with Yes or No."
YES_VARIANTS = ("Yes", " Yes")
NO_VARIANTS = ("No", " No")

# The rubric is fixed here, in the code, so every run scores reasoning the same way. It rates how
# the reasoning LOOKS (its plausibility), which is what a convincing wrong solution needs; the
# judge never sees the gold answer.
JUDGE_RUBRIC: dict[str, str] = {
    "logical_flow": "Each step follows from the previous ones, and together the steps lead to the final answer.",
    "step_validity": "Each calculation and claim looks valid as written: no visible arithmetic slips, "
                     "unjustified jumps or contradictions.",
    "relevance": "The steps use the quantities and conditions given in the problem and work toward what it asks.",
    "completeness": "The solution covers every part of the problem, skips no needed step, "
                    "and ends with a clearly stated final answer.",
}
JUDGE_SCORES = ("0", "1", "2", "3")
# Short on purpose: this tail runs once per criterion on top of the shared head, and its length is
# what the judge costs beyond the verifier (SharedPrefixScorer). On SmolLM2-135M-Instruct (4
# reference solutions, 4 nonsense ones) it also read best: p("0".."3") 0.73, mean score 1.79 vs
# 1.46, where a 60-token wording with the criterion's name and a 4-step scale had 0.47, 1.64 vs 1.59.
JUDGE_QUESTION = "Score it from 0 to 3 on: {description}"
# The judge's answer turn is pre-filled with this, so that the next token is the digit (on
# SmolLM2-135M-Instruct it moved the probability mass on "0".."3" from ~5% to ~43% with an
# earlier, longer judge prompt).
JUDGE_ANSWER_PREFIX = "Score:"


def _split_on_slot(text: str) -> tuple[str, str]:
    head, sep, tail = text.partition(COMPLETION_SLOT)
    if not sep or COMPLETION_SLOT in tail:
        raise ValueError("the chat template altered the completion placeholder; cannot build the scoring prompt")
    return head, tail


def reward_model_text(tokenizer, prompt: list[dict] | str, completion: list[dict] | str,
                      chat_template_kwargs: dict | None = None) -> str:
    """THE text a classifier reward model sees, in training (train_reward_model.py) and in scoring:
    one function, so a trained reward model is never applied to inputs it was not trained on. As
    TRL's RewardTrainer renders a pair: a message-list `prompt` gives the chat template of prompt +
    [assistant: completion], no generation prompt, with the pair's `chat_template_kwargs`; a string
    prompt gives prompt + completion + EOS."""
    if isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat-message pairs need a tokenizer with a chat template; this one has none")
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(prompt + completion, tokenize=False, **(chat_template_kwargs or {}))
    text = prompt + completion
    return text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token


def policy_prompt(tokenizer, question: str) -> list[dict] | str:
    """The prompt the policy saw, as `reward_model_text` takes it: `data.prompt_messages(question)`,
    or `format_prompt`'s plain layout without a chat template."""
    has_template = getattr(tokenizer, "chat_template", None)
    return prompt_messages(question) if has_template else format_prompt(tokenizer, question)


def reward_model_parts(tokenizer, question: str, chat_template_kwargs: dict | None = None) -> tuple[str, str]:
    """(text before the completion, text after it) of `reward_model_text` for `policy_prompt`: the
    cut of a row too long for the model (the template renders a placeholder for the completion)."""
    return _split_on_slot(reward_model_text(tokenizer, policy_prompt(tokenizer, question), COMPLETION_SLOT,
                                            chat_template_kwargs))


def _scoring_parts(tokenizer, question: str, ask: str) -> tuple[str, str]:
    """(text before the completion, text after it) of SCORING_HEAD + `ask` as the user turn, followed
    by the assistant's generation prompt (`data.chat_prompt`, or "User: ...\n\nAssistant: " for a
    tokenizer without a chat template)."""
    user = SCORING_HEAD.format(question=question.strip(), completion=COMPLETION_SLOT) + ask
    if getattr(tokenizer, "chat_template", None):
        return _split_on_slot(chat_prompt(tokenizer, [{"role": "user", "content": user}]))
    return _split_on_slot(f"User: {user}\n\nAssistant: ")


def verifier_parts(tokenizer, question: str) -> tuple[str, str]:
    """(text before the completion, text after it) for the generative reward model."""
    return _scoring_parts(tokenizer, question, VERIFIER_QUESTION)


def judge_parts(tokenizer, question: str, name: str, answer_prefix: str = "") -> tuple[str, str]:
    """The same for one rubric criterion, the answer turn pre-filled with `answer_prefix`. The text
    before the completion is the verifier's: the criterion is asked after the solution."""
    head, tail = _scoring_parts(tokenizer, question, JUDGE_QUESTION.format(description=JUDGE_RUBRIC[name]))
    return head, tail + answer_prefix


# ---------------------------------------------------------------------------------------------
# Tokenizing, truncating, batching.
# ---------------------------------------------------------------------------------------------
def encode_with_completion(tokenizer, head: str, completion: str, tail: str, max_length: int) -> list[int]:
    """`encode_with_completions` for one tail: the token ids of head + completion + tail."""
    return encode_with_completions(tokenizer, head, completion, [tail], max_length)[0]


def encode_with_completions(tokenizer, head: str, completion: str, tails: list[str],
                            max_length: int) -> list[list[int]]:
    """Token ids of head + completion + tail, one row per tail, each at most `max_length` long. Rows
    that fit are tokenized in one piece, exactly as tokenizer(head + completion + tail). Otherwise
    every row gets the cut the longest tail needs, so the rows still begin with the same tokens (and
    can share them): the START of the completion goes (its end holds the final answer), and if the
    head alone leaves the completion less than half of `max_length`, the head is cut from its start too."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole = [enc(head + completion + tail) for tail in tails]
    if max(map(len, whole)) <= max_length:
        return whole
    h, c, ts = enc(head), enc(completion), [enc(t) for t in tails]  # pieces, so the cut falls inside the completion
    t = max(map(len, ts))
    keep = min(len(c), max(max_length - len(h) - t, max_length // 2))
    c = c[len(c) - keep:]
    over = len(h) + len(c) + t - max_length
    if over > 0:
        h = h[over:]
    if len(h) + len(c) + t > max_length:
        raise ValueError(f"max_length={max_length} is too small for the scoring prompt ({t} tokens follow "
                         f"the completion); raise max_length")
    return [h + c + tail for tail in ts]


def shared_length(rows: list[list[int]]) -> int:
    """How many leading tokens all `rows` have in common, leaving at least one token of each row
    out of it (a row's score is read at its last token, which must be in its own tail)."""
    n = min(map(len, rows)) - 1
    for i in range(n):
        if any(row[i] != rows[0][i] for row in rows[1:]):
            return i
    return n


def single_token_ids(tokenizer, variants: tuple[str, ...]) -> list[int]:
    """Ids of the variants that are ONE token each (" 3" is two tokens in some tokenizers)."""
    ids = []
    for v in variants:
        enc = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    if not ids:
        raise ValueError(f"none of {variants} is a single token for this tokenizer: the score cannot be read")
    return ids


class _BatchedScorer:
    """Holds the model and runs a forward over batches of its inputs."""

    def __init__(self, model, tokenizer, *, use_reference: bool = False, batch_size: int = 8, max_length: int = 2048):
        if batch_size < 1 or max_length < 16:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 16, got {batch_size}, {max_length}")
        self.model, self.tokenizer = model, tokenizer
        self.use_reference, self.batch_size, self.max_length = use_reference, batch_size, max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the scorer's tokenizer has neither a pad nor an EOS token to pad with")

    def _run(self, inputs: list, forward, length=len) -> torch.Tensor:
        """forward(batch of inputs) -> (B, ...) over batches of `batch_size` inputs, longest first (so
        that each batch carries little padding), in eval mode under no_grad (+ adapter disabled), the
        training mode restored afterwards; the outputs stacked (N, ...) on the CPU, in the input order."""
        if not inputs:
            return torch.empty(0)
        order = sorted(range(len(inputs)), key=lambda i: -length(inputs[i]))
        out: list[torch.Tensor | None] = [None] * len(inputs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), (reference_model(self.model) if self.use_reference else contextlib.nullcontext()):
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    values = forward([inputs[i] for i in chunk]).float().cpu()  # (B, ...)
                    for j, i in enumerate(chunk):
                        out[i] = values[j]
        finally:
            self.model.train(was_training)
        return torch.stack(out)

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows -> left-padded (ids, mask), both (B, L), on the model's device. Every forward
        passes position ids that skip the padding, so a score does not depend on its batch."""
        ids, mask = left_pad(rows, self.pad_id)
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)


def sigmoid(x: float) -> float:
    """The logistic function, stable for large |x|: a raw reward-model score -> [0, 1]."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _check_lengths(questions: list[str], completions: list[str]) -> None:
    if len(questions) != len(completions):
        raise ValueError(f"{len(questions)} questions but {len(completions)} completions: "
                         f"pass one question per completion")


def _check_criteria(criteria: tuple[str, ...] | None) -> tuple[str, ...]:
    """The judge's criteria: a non-empty subset of JUDGE_RUBRIC (None: all of them)."""
    chosen = tuple(JUDGE_RUBRIC) if criteria is None else tuple(criteria)
    if not chosen or any(c not in JUDGE_RUBRIC for c in chosen):
        raise ValueError(f"judge criteria must be a non-empty subset of {', '.join(JUDGE_RUBRIC)}; got {criteria}")
    return chosen


# ---------------------------------------------------------------------------------------------
# The generative verifier and the judge: short questions ("tails") after one shared head.
# ---------------------------------------------------------------------------------------------
class SharedPrefixScorer(_BatchedScorer):
    """Next-token scores of one instruct model asked several questions about the same (question,
    completion): the verifier (tail VERIFIER) and/or judge criteria (tails named by JUDGE_RUBRIC's
    keys). Every prompt is SCORING_HEAD + its question, so a completion's token rows (one per
    tail) begin with the same tokens: chat-template start, problem, solution. Per batch of pairs:

      prefill  the common prefix of each pair's rows ONCE, into a DynamicCache:
                 (B, Lp) left-padded -> cache layers (B, H, Lp, D)
      copy     the cache for each of the k tails (DynamicCache.batch_repeat_interleave):
                 -> (B*k, H, Lp, D), pair-major (pair 0's tails 0..k-1, then pair 1's, ...)
      tails    one forward of all B*k tails on top of it. Each tail is left-padded IN THE MIDDLE
               (pad tokens with attention mask 0 between the shared part and the tail), so every
               row ends at its last column; position ids = cumsum(mask) - 1 over the whole row,
               as for the full row; the score is read from the next-token distribution there:
                 (B*k, T) -> (B*k, V) -> (B, k) scores

    Same tokens, same positions, same attention: each score equals the full forward of its row
    (to float rounding; tested to 1e-4 in fp32 on the real model), in any batch. Memory: a batch's
    prefix cache is held k times. share_prefix=False runs each row asked for in full, a pass per tail.
    Cost ~(Lp + k T) tokens instead of k (Lp + T). Measured on SmolLM2-135M, 8 completions, CPU
    (benchmarks/scoring.py): verifier + judge cost 2.1x one verifier pass on ~65-token completions
    (5.8x unshared) and 1.56x on ~260-token ones (5.0x): the shared part grows, the tails do not.

    `scores(questions, completions, names)` computes EVERY tail for its rows (unshared: only
    `names`) and keeps the values it was not asked for; the next call on the same rows is served
    from them, once. So a reward model and a judge sharing one SharedPrefixScorer (build_scorers'
    default) prefill each completion once between them (a run that calls only one of them still
    pays for all tails; train_generator.py turns sharing off when a weight is 0)."""

    def __init__(self, model, tokenizer, *, tails: tuple[str, ...] = (VERIFIER, *JUDGE_RUBRIC),
                 use_reference: bool = False, batch_size: int = 8, max_length: int = 2048, share_prefix: bool = True):
        super().__init__(model, tokenizer, use_reference=use_reference, batch_size=batch_size, max_length=max_length)
        self.tails, self.share_prefix = tuple(tails), share_prefix
        criteria = [t for t in self.tails if t != VERIFIER]
        if criteria:
            _check_criteria(tuple(criteria))
        if len(set(self.tails)) != len(self.tails) or not self.tails:
            raise ValueError(f"tails must be distinct, non-empty names ({VERIFIER!r} or criteria); got {tails}")
        if VERIFIER in self.tails:
            self.yes_ids = single_token_ids(tokenizer, YES_VARIANTS)
            self.no_ids = single_token_ids(tokenizer, NO_VARIANTS)
        if criteria:
            self.score_ids = [single_token_ids(tokenizer, (k, " " + k)) for k in JUDGE_SCORES]  # variants per score
        # "Score: 3" is "Score", ":", " ", "3" in SmolLM2, Llama 3 and Qwen 2: where the tokenizer
        # splits the space off a digit, the prefix ends with the space, so the next token is the digit.
        space_split = any(len(tokenizer(" " + k, add_special_tokens=False)["input_ids"]) > 1 for k in JUDGE_SCORES)
        self.answer_prefix = JUDGE_ANSWER_PREFIX + (" " if space_split else "")
        self._kept: dict[tuple[str, str], dict[str, float]] = {}  # (question, completion) -> values not yet asked for

    def _read(self, name: str, logp: torch.Tensor) -> torch.Tensor:
        """The score of tail `name` from next-token log-probs (B, V) -> (B,)."""
        if name == VERIFIER:  # log p(Yes) - log p(No), each summed over its single-token variants
            return logp[:, self.yes_ids].logsumexp(-1) - logp[:, self.no_ids].logsumexp(-1)
        per_score = torch.stack([logp[:, v].logsumexp(-1) for v in self.score_ids], dim=-1)  # (B, 4) log p(k)
        weights = per_score.softmax(-1)  # (B, 4) p(k) / sum_k p(k): renormalised over the score tokens only
        values = torch.arange(len(JUDGE_SCORES), dtype=weights.dtype, device=weights.device)  # 0, 1, 2, 3
        return (weights * values).sum(-1)  # (B,) expected score

    def rows(self, question: str, completion: str) -> list[list[int]]:
        """The token rows of one pair, one per tail (in `self.tails` order): head + completion + tail."""
        parts = [verifier_parts(self.tokenizer, question) if name == VERIFIER
                 else judge_parts(self.tokenizer, question, name, self.answer_prefix) for name in self.tails]
        head = parts[0][0]
        if any(h != head for h, _ in parts):
            raise ValueError("the chat template put tail-specific text before the completion; cannot share the head")
        return encode_with_completions(self.tokenizer, head, completion, [t for _, t in parts], self.max_length)

    def scores(self, questions: list[str], completions: list[str], names: tuple[str, ...]) -> list[dict[str, float]]:
        """{name: score} for each pair, for the tails `names`."""
        _check_lengths(questions, completions)
        if any(n not in self.tails for n in names):
            raise ValueError(f"this scorer asks {self.tails}; {names} were requested")
        pairs = list(zip(questions, completions))
        if not pairs:
            return []
        kept = self._kept
        if all(p in kept and all(n in kept[p] for n in names) for p in pairs):
            self._kept = {}  # served once: any later call computes afresh
            return [{n: kept[p][n] for n in names} for p in pairs]
        unique = list(dict.fromkeys(pairs))  # a repeated completion (same question) is scored once
        values = dict(zip(unique, self._compute(unique, names)))
        self._kept = {p: {n: v for n, v in d.items() if n not in names} for p, d in values.items()}
        return [{n: values[p][n] for n in names} for p in pairs]

    def _compute(self, pairs: list[tuple[str, str]], names: tuple[str, ...]) -> list[dict[str, float]]:
        """Every tail's score when sharing the prefix (the tails cost little on top of it), else only
        `names`: unshared, each tail is a full pass of its own, and another call may never want it."""
        rows = [self.rows(q, c) for q, c in pairs]  # (N, k) token rows
        if self.share_prefix and len(self.tails) > 1:
            values = self._run(rows, self._forward_shared, length=lambda pair_rows: len(pair_rows[0]))  # (N, k)
            return [dict(zip(self.tails, v)) for v in values.tolist()]
        wanted = [(j, name) for j, name in enumerate(self.tails) if name in names]
        values = torch.stack([self._run([r[j] for r in rows], functools.partial(self._forward_full, name))
                              for j, name in wanted], dim=1)  # (N, len(names)), one full pass per tail
        return [dict(zip([name for _, name in wanted], v)) for v in values.tolist()]

    def _forward_full(self, name: str, rows: list[list[int]]) -> torch.Tensor:
        """Scores of tail `name` from its full rows, no cache: B rows -> (B,)."""
        ids, mask = self._padded(rows)  # (B, L)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                            logits_to_keep=1, use_cache=False).logits[:, -1]  # (B, V)
        return self._read(name, logits.float().log_softmax(-1))

    def _forward_shared(self, batch: list[list[list[int]]]) -> torch.Tensor:
        """B pairs, k token rows each -> (B, k) scores; each pair's common prefix runs once."""
        from transformers import DynamicCache

        k = len(self.tails)
        cut = [shared_length(rows) for rows in batch]  # (B,) shared tokens of each pair
        # --- prefill the shared part once per pair ---
        ids, mask = self._padded([rows[0][:s] for rows, s in zip(batch, cut)])  # (B, Lp)
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(k)  # every layer (B, H, Lp, D) -> (B*k, H, Lp, D)
        # --- every tail on top of its pair's cache, left-padded in the middle ---
        tail_ids, tail_mask = self._padded([row[s:] for rows, s in zip(batch, cut) for row in rows])  # (B*k, T)
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), tail_mask], dim=1)  # (B*k, Lp + T)
        positions = position_ids_from_mask(full_mask)[:, -tail_ids.shape[1]:]  # (B*k, T) as in the full row
        logits = self.model(input_ids=tail_ids, attention_mask=full_mask, position_ids=positions,
                            cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (B*k, V)
        logp = logits.float().log_softmax(-1).view(len(batch), k, -1)  # (B, k, V)
        return torch.stack([self._read(name, logp[:, j]) for j, name in enumerate(self.tails)], dim=1)  # (B, k)


# ---------------------------------------------------------------------------------------------
# Reward model: classifier (trained Bradley-Terry head) or generative (Yes/No verifier).
# ---------------------------------------------------------------------------------------------
class RewardModelScorer(_BatchedScorer):
    """Reward-model scores of (question, completion) pairs: `raw` -> logit-scale scores (the paper
    reports raw RM scores such as +3.34 / -3.13); `__call__` -> sigmoid(raw) in [0, 1]. `kind`
    (None: "classifier" for a *ForSequenceClassification model, else "generative"):
      classifier  a one-label sequence-classification model (train_reward_model.py writes one);
                  raw = its logit on `reward_model_text` of the policy's prompt + the completion.
      generative  an instruct model asked VERIFIER_QUESTION after the problem and the solution;
                  raw = log p(Yes) - log p(No) of its next token, each summed over YES_VARIANTS /
                  NO_VARIANTS. It asks through `shared` (a SharedPrefixScorer with the VERIFIER
                  tail, e.g. one shared with a judge), or through its own."""

    def __init__(self, model, tokenizer, *, kind: str | None = None, use_reference: bool = False,
                 batch_size: int = 8, max_length: int = 2048, chat_template_kwargs: dict | None = None,
                 shared: SharedPrefixScorer | None = None):
        super().__init__(model, tokenizer, use_reference=use_reference, batch_size=batch_size, max_length=max_length)
        self.chat_template_kwargs = chat_template_kwargs  # the classifier's template switches, as in its pairs
        arch = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
        is_classifier = arch.endswith("ForSequenceClassification")
        self.kind = kind or ("classifier" if is_classifier else "generative")
        if self.kind not in ("classifier", "generative"):
            raise ValueError(f"kind must be 'classifier' or 'generative', got {self.kind!r}")
        if self.kind == "classifier":
            if not is_classifier:
                raise ValueError(f"a classifier reward model must be a sequence-classification model, got {arch}")
            if model.config.num_labels != 1 or model.config.pad_token_id is None:
                raise ValueError(f"a classifier reward model needs num_labels=1 and a pad_token_id "
                                 f"(got {model.config.num_labels}, {model.config.pad_token_id}); "
                                 f"load it with load_model_and_tokenizer(path, num_labels=1)")
        else:
            self.shared = shared or SharedPrefixScorer(model, tokenizer, tails=(VERIFIER,), use_reference=use_reference,
                                                       batch_size=batch_size, max_length=max_length)
            if VERIFIER not in self.shared.tails:
                raise ValueError(f"the shared scorer of a generative reward model must ask {VERIFIER!r}")

    def rows(self, questions: list[str], completions: list[str]) -> list[list[int]]:
        """The token rows the model scores, one per (question, completion)."""
        _check_lengths(questions, completions)
        rows = []
        for question, completion in zip(questions, completions):
            if self.kind == "classifier":
                # whole, as train_reward_model.py tokenizes a pair: a template that edits the content
                # (Qwen3 re-renders a think block, Llama 3 trims) edits it here too; cut only when too long
                prompt = policy_prompt(self.tokenizer, question)
                text = reward_model_text(self.tokenizer, prompt, completion, self.chat_template_kwargs)
                ids = self.tokenizer(text, add_special_tokens=not isinstance(prompt, list))["input_ids"]
                if len(ids) <= self.max_length:
                    rows.append(ids)
                    continue
            head, tail = (reward_model_parts(self.tokenizer, question, self.chat_template_kwargs)
                          if self.kind == "classifier" else verifier_parts(self.tokenizer, question))
            rows.append(encode_with_completion(self.tokenizer, head, completion, tail, self.max_length))
        return rows

    def raw(self, questions: list[str], completions: list[str]) -> list[float]:
        if self.kind == "generative":
            return [d[VERIFIER] for d in self.shared.scores(questions, completions, (VERIFIER,))]
        forward = lambda rows: sequence_scores(self.model, *self._padded(rows))  # noqa: E731 (B,) last token's logit
        return self._run(self.rows(questions, completions), forward).tolist()

    def __call__(self, questions: list[str], completions: list[str]) -> list[float]:
        return [sigmoid(r) for r in self.raw(questions, completions)]


# ---------------------------------------------------------------------------------------------
# LLM judge of the chain of thought on the fixed rubric.
# ---------------------------------------------------------------------------------------------
class JudgeScorer(_BatchedScorer):
    """Rubric scores of the reasoning in (question, completion) pairs; the gold is never shown. One
    prompt per criterion (problem, solution, then JUDGE_QUESTION), its answer turn pre-filled with
    JUDGE_ANSWER_PREFIX; a criterion's score is the probability-weighted digit of the next token,
    E = sum_k k p(k) / sum_k p(k) over "0".."3", so it is never unparseable and varies smoothly.
    `score_detailed` -> {criterion: E} per pair; `raw` -> the mean E (0-3); `__call__` -> mean E / 3
    in [0, 1]. It asks through `shared` (a SharedPrefixScorer holding its criteria, e.g. one shared
    with the generative reward model), or through its own when none is given."""

    def __init__(self, model, tokenizer, *, use_reference: bool = False, batch_size: int = 8, max_length: int = 2048,
                 criteria: tuple[str, ...] | None = None, share_prefix: bool = True,
                 shared: SharedPrefixScorer | None = None):
        super().__init__(model, tokenizer, use_reference=use_reference, batch_size=batch_size, max_length=max_length)
        # A subset (e.g. ("logical_flow",)) costs proportionally less: one tail per criterion.
        self.criteria = _check_criteria(criteria)
        self.shared = shared or SharedPrefixScorer(model, tokenizer, tails=self.criteria, use_reference=use_reference,
                                                   batch_size=batch_size, max_length=max_length,
                                                   share_prefix=share_prefix)
        if any(c not in self.shared.tails for c in self.criteria):
            raise ValueError(f"the shared scorer asks {self.shared.tails}, not every criterion of {self.criteria}")
        self.answer_prefix = self.shared.answer_prefix

    def score_detailed(self, questions: list[str], completions: list[str]) -> list[dict[str, float]]:
        return self.shared.scores(questions, completions, self.criteria)

    def raw(self, questions: list[str], completions: list[str]) -> list[float]:
        return [sum(d.values()) / len(d) for d in self.score_detailed(questions, completions)]

    def __call__(self, questions: list[str], completions: list[str]) -> list[float]:
        top = len(JUDGE_SCORES) - 1
        return [r / top for r in self.raw(questions, completions)]


# ---------------------------------------------------------------------------------------------
# Factory used by train_generator.py and synthesize.py.
# ---------------------------------------------------------------------------------------------
def _same_model(name: str, base_model_name: str) -> bool:
    """Whether `name` names the policy's base model (the same string, or the same resolved folder)."""
    if name == base_model_name:
        return True
    try:
        return resolve_model_path(name) == (resolve_model_path(base_model_name)[0], None)
    except ModelLoadError:
        return False


def build_scorers(policy_model, policy_tokenizer, *, reward_model: str | None, judge_model: str | None,
                  base_model_name: str, device: str = "auto", dtype: str = "auto", load_in_4bit: bool = False,
                  batch_size: int = 8, max_length: int = 2048, judge_criteria: tuple[str, ...] | None = None,
                  share_prefix: bool = True) -> tuple[RewardModelScorer, JudgeScorer]:
    """(reward-model scorer, judge scorer) for a run whose policy was loaded from `base_model_name`.

    reward_model None: the generative verifier on the base model; a name or folder: a classifier
        reward model loaded with num_labels=1 (a merged model folder or an adapter folder on a
        sequence-classification base, as train_reward_model.py writes).
    judge_model None or the base model's name: the base model; another name: that model, loaded.
    The base model is the policy with its adapter disabled (policy_model None: loaded once here).
    When both scorers use it (the default) they share one SharedPrefixScorer; share_prefix=False
    runs every prompt in full. judge_criteria: a subset of JUDGE_RUBRIC (None: all four). A name
    that cannot load raises ModelLoadError naming the option."""
    load = dict(device=device, dtype=dtype, load_in_4bit=load_in_4bit)

    @functools.cache
    def base():  # the policy's base model: (model, tokenizer, use_reference), loaded at most once
        if policy_model is not None:
            # Memory trick: the policy with its adapter disabled is the base; no second copy.
            return policy_model, policy_tokenizer, hasattr(policy_model, "disable_adapter")
        return (*_load(base_model_name, "--model", **load), False)

    criteria = _check_criteria(judge_criteria)
    opts = dict(batch_size=batch_size, max_length=max_length)
    judge_on_base = judge_model is None or _same_model(judge_model, base_model_name)
    shared = None
    if reward_model is None and judge_on_base:  # one model asks all five questions: share the head
        model, tok, use_ref = base()
        shared = SharedPrefixScorer(model, tok, tails=(VERIFIER, *criteria), use_reference=use_ref,
                                    share_prefix=share_prefix, **opts)
    if reward_model is None:
        model, tok, use_ref = base()
        rm = RewardModelScorer(model, tok, kind="generative", use_reference=use_ref, shared=shared, **opts)
    else:
        rm = classifier_reward_model(reward_model, **opts, **load)
    if judge_on_base:
        model, tok, use_ref = base()
        judge = JudgeScorer(model, tok, use_reference=use_ref, criteria=criteria, share_prefix=share_prefix,
                            shared=shared, **opts)
    else:
        model, tok = _load(judge_model, "--judge-model", **load)
        judge = JudgeScorer(model, tok, criteria=criteria, share_prefix=share_prefix, **opts)
    return rm, judge


def classifier_reward_model(name: str, option: str = "--reward-model", *, batch_size: int = 8,
                            max_length: int = 2048, **load) -> RewardModelScorer:
    """The classifier reward model in `name` (a merged folder, or an adapter on a sequence-
    classification base, as train_reward_model.py writes), loaded with num_labels=1. Loading a
    causal LM that way silently adds a RANDOM score head: that, or an adapter without a trained
    `score` module, raises ModelLoadError naming `option`."""
    model, tok = _load(name, option, num_labels=1, **load)
    peft_config = getattr(model, "peft_config", {}).get("default")
    if peft_config is not None:
        trained = str(peft_config.task_type).endswith("SEQ_CLS") and "score" in (peft_config.modules_to_save or [])
    else:
        trained = any(a.endswith("ForSequenceClassification") for a in (model.config.architectures or []))
    if not trained:
        raise ModelLoadError(f"{option} {name!r} holds no trained reward head (a causal LM or an adapter "
                             f"without a 'score' module); give a folder written by train_reward_model.py, or "
                             f"omit --reward-model to use the generative verifier")
    return RewardModelScorer(model, tok, kind="classifier", batch_size=batch_size, max_length=max_length)


def _load(name: str, option: str, **kwargs):
    try:
        model, tok = load_model_and_tokenizer(name, **kwargs)
    except ModelLoadError as e:
        raise ModelLoadError(f"{option} {name!r}: {e}") from None
    model.requires_grad_(False)  # a scorer is never trained
    return model, tok
