"""Batched, KV-cached sampling, and completion masks built from the POSITION of the first EOS.

Rows are prompt-major: with prompts [p0, p1] and n=3 the rows are p0,p0,p0,p1,p1,p1, which is the
grouping `losses.group_advantages` expects.

Two engines draw from the SAME distribution (softmax(logits / temperature), cut to the nucleus
`top_p`; greedy at temperature 0) and nothing else:

* "loop" (the default, `_decode_group`): our own decode loop over transformers' model and cache
  classes, written for the shapes PNS samples (G completions of each prompt):
  1. each distinct prompt is prefilled ONCE and its cache copied to its G rows;
  2. a row that has emitted EOS leaves the decode batch: a batch costs its rows' lengths, not
     G x its longest row;
  3. the KV cache is a `StaticCache` written in place, not a growing `DynamicCache`;
  4. a LoRA adapter on a full-precision base is merged into the weights for the rollout
     (`merged_lora`): one matmul per weight instead of three;
  5. each row draws from its own `torch.Generator` (`row_seeds`): a row's tokens do not depend on
     which other rows share its batch.
* "generate": transformers' `generate` (the baseline of benchmarks/generation.py, and the path
  for `use_cache=False`).

The model folder's own `generation_config.json` never applies: real instruct models ship logits
processors there (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20, top_p 0.8, temperature
0.7; others no_repeat_ngram_size, min_length, suppress_tokens...) and transformers fills every
unset `GenerationConfig` field from it, so a rollout would sample from a distribution that
`modeling.token_logprobs` does not score (GRPO ratio, KL and policy gradient all off, "greedy"
evaluation not greedy). The loop applies only temperature and top_p; `_generate_rows` blanks it.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass

import torch

from pns_mini.modeling import position_ids_from_mask


@dataclass
class Completions:
    prompt_ids: torch.Tensor       # (N, P) left-padded prompt tokens
    prompt_mask: torch.Tensor      # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor   # (N, T) sampled tokens, padded after the first EOS
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the first EOS, 0 after
    truncated: torch.Tensor        # (N,) bool: no EOS within max_new_tokens
    texts: list[str]               # decoded completions (masked tokens only, special tokens dropped)
    prompt_index: list[int]        # row -> index of its prompt in the input list
    logprobs: torch.Tensor | None = None  # (N, T) fp32 log p(token) under softmax(logits / temperature)
                                          # (temperature 1 when greedy), 0 after the mask; loop engine only

    @property
    def input_ids(self) -> torch.Tensor:  # (N, P+T) prompt followed by completion
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (N, P+T)
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:  # (N,) completion tokens, EOS included
        return self.completion_mask.sum(-1)


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS plus the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    if not ids:
        raise ValueError("tokenizer has no eos_token_id: completions could never be marked as finished")
    return sorted(ids)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids -> (mask (N, T) long, truncated (N,) bool). mask[i, t] = 1 for t <= the position
    of the first EOS in row i (the EOS is kept, so the model is trained to stop), 0 after; a row
    without EOS is all ones and `truncated`. Built from positions, not token == pad: pad may be EOS."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # (N, T)
    has_eos = is_eos.any(dim=1)  # (N,)
    T = completion_ids.shape[1]
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, T, dtype=torch.long))
    positions = torch.arange(T, device=completion_ids.device)[None, :]  # (1, T)
    mask = (positions <= first[:, None]).long()
    return mask, ~has_eos


def left_pad(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows (lists or 1-D tensors) -> (ids (B, L), mask (B, L)), padded on the LEFT, so
    every row ends at the last column (where the next token or a score is read)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def right_pad(rows, pad, dtype=torch.long) -> torch.Tensor:
    """Rows (lists or 1-D tensors) -> (B, max length), padded on the right with `pad`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Merged LoRA for rollouts
# ---------------------------------------------------------------------------------------------
def _lora_layers(model) -> list:
    """The LoRA layers of a peft model whose adapter is active (not disabled, not yet merged)."""
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer) and not m.disable_adapters and not m.merged
            and any(a in m.lora_A for a in m.active_adapters)]


def can_merge_lora(model) -> bool:
    """Whether `merged_lora` merges: a peft LoRA model, adapter on, fp32 base weights, nothing
    quantized. A bf16 base is not merged: W + dW rounded to bf16 loses most of a small dW (bf16
    keeps 8 bits of mantissa), so the rollout would sample a visibly different policy. A 4-bit
    base cannot be merged without dequantizing it."""
    layers = _lora_layers(model) if hasattr(model, "peft_config") else []
    return bool(layers) and all(
        isinstance(m.base_layer, torch.nn.Linear) and m.base_layer.weight.dtype == torch.float32 for m in layers)


@contextlib.contextmanager
def merged_lora(model):
    """Inside: every active LoRA layer's base weight is REPLACED by a new tensor W + scale * B @ A
    and the adapter branch is off (peft's `disable_adapter`), so a forward is one matmul per
    weight; on exit the original tensors are put back untouched (not "unmerged" by subtraction,
    which would drift by a rounding error per rollout). Costs one copy of the adapted weights while
    it lasts; a no-op where `can_merge_lora` is False. Float error: x @ (W + dW)^T rounds
    differently from x @ W^T + (x @ A^T) @ B^T; in fp32 the log-probs differ by ~1e-6
    (tests/test_generation.py bounds it at 1e-4 against the unmerged `token_logprobs`), far below
    the GRPO ratio's clip range."""
    if not can_merge_lora(model):
        yield model
        return
    layers = _lora_layers(model)
    originals = [m.base_layer.weight.data for m in layers]
    try:  # merging inside: an error halfway (out of memory) still puts every original back
        with torch.no_grad():
            for m, w in zip(layers, originals):
                delta = sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A)
                m.base_layer.weight.data = w + delta.to(w.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for m, w in zip(layers, originals):
            m.base_layer.weight.data = w


# ---------------------------------------------------------------------------------------------
# Choosing the next token
# ---------------------------------------------------------------------------------------------
def row_seeds(seed: int | list[int] | None, num_prompts: int, num_samples: int) -> list[int] | None:
    """One seed per row: row j of prompt i gets crc32 of (prompt seed, j). An int `seed` gives
    prompt i the prompt seed (seed, i); a list gives each prompt its own seed, so a prompt's rows
    are the same whatever batch or position it has (synthesis seeds per problem)."""
    if seed is None:
        return None
    prompt_seeds = list(seed) if isinstance(seed, (list, tuple)) else [f"{seed}/{i}" for i in range(num_prompts)]
    if len(prompt_seeds) != num_prompts:
        raise ValueError(f"{len(prompt_seeds)} seeds for {num_prompts} prompts")
    return [zlib.crc32(f"{s}/{j}".encode()) for s in prompt_seeds for j in range(num_samples)]


def next_tokens(logprobs: torch.Tensor, temperature: float, top_p: float, generators: list | None) -> torch.Tensor:
    """(B, V) log-probs -> (B,) token ids: the argmax when temperature is 0; else a draw from the
    distribution cut to its nucleus: the smallest set of most likely tokens whose probability
    reaches top_p (at least one token), renormalised: the rule of transformers' TopPLogitsWarper.
    Row b draws with generators[b] (None: the global RNG)."""
    if temperature == 0:
        return logprobs.argmax(-1)
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1)  # ascending, as TopPLogitsWarper
        drop_sorted = sorted_p.cumsum(-1) <= 1 - top_p
        drop_sorted[:, -1] = False  # keep the most likely token
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    # Inverse-CDF draw: one uniform per row (from that row's generator) instead of torch.multinomial
    # per row, whose exponential noise over the whole vocabulary was ~5% of a CPU decode step.
    if generators is None:
        u = torch.rand(len(probs), device=probs.device)
    else:
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    # float64: an fp32 running sum near 1 rounds every small probability to a multiple of 6e-8
    # (total variation ~9e-4 on a 152k vocabulary, ~1e-13 in float64)
    cdf = probs.double().cumsum(-1)  # (B, V)
    target = (1.0 - u.double()[:, None]) * cdf[:, -1:]  # (B, 1) in (0, total]: never lands on a leading zero
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=probs.shape[-1] - 1)  # first cdf >= target


# ---------------------------------------------------------------------------------------------
# The decode loop
# ---------------------------------------------------------------------------------------------
def _decode_group(model, prompts: list[torch.Tensor], n: int, *, temperature: float, top_p: float,
                  max_new_tokens: int, eos: list[int], pad_id: int, generators: list | None,
                  device, cache_implementation: str) -> tuple[list[list[int]], list[list[float]]]:
    """Sample n completions of each prompt (1-D id tensors). Returns per row (prompt-major) its
    tokens and their log-probs, each cut after the first EOS."""
    from transformers import DynamicCache, StaticCache

    ids, mask = left_pad(prompts, pad_id)  # (P, L)
    ids, mask = ids.to(device), mask.to(device)
    # A static cache is allocated once at its final length and written in place; a DynamicCache
    # concatenates every layer's keys and values at every step (~20% of a CPU decode step at batch 8).
    cache = (StaticCache(config=model.config, max_cache_len=ids.shape[1] + max_new_tokens)
             if cache_implementation == "static" else DynamicCache(config=model.config))
    # Prefill each distinct prompt once; logits of the last position only.
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                cache=cache, use_cache=True, logits_to_keep=1)
    expand = torch.arange(len(prompts), device=device).repeat_interleave(n)  # (P*n,) row -> its prompt
    logits = out.logits[:, -1][expand]  # (P*n, V)
    cache.reorder_cache(expand)  # every layer (P, H, L, D) -> (P*n, H, L, D): copies, the same values
    mask = mask[expand]  # (B, L) attention mask of the live rows
    live = torch.arange(len(prompts) * n, device=device)  # original row of each live row
    eos_t = torch.tensor(eos, device=device)
    steps = []  # per step: (live, (B,) tokens, (B,) their log-probs)
    for step in range(max_new_tokens):
        # (B, V) fp32: the distribution token_logprobs scores (greedy scores at temperature 1)
        lp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
        gens = None if generators is None else [generators[i] for i in live.tolist()]
        tok = next_tokens(lp, temperature, top_p, gens)  # (B,)
        steps.append((live, tok, lp.gather(-1, tok[:, None]).squeeze(-1)))
        keep = ~torch.isin(tok, eos_t)  # rows still writing
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():  # finished rows leave the batch: from now on they cost nothing
            idx = keep.nonzero().squeeze(-1)
            cache.reorder_cache(idx)
            live, tok, mask = live[idx], tok[idx], mask[idx]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)  # (B, L + step + 1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1]  # (B, V)
    # Reassemble rows from the per-step records.
    rows_tok = [[] for _ in range(len(prompts) * n)]
    rows_lp = [[] for _ in range(len(prompts) * n)]
    for rows, tok, lp in steps:
        for r, t, l in zip(rows.tolist(), tok.tolist(), lp.tolist()):
            rows_tok[r].append(t)
            rows_lp[r].append(l)
    return rows_tok, rows_lp


def _generate_rows(model, rows: list[torch.Tensor], *, temperature, top_p, max_new_tokens, eos, pad_id,
                   use_cache, device) -> list[torch.Tensor]:
    """`generate` on left-padded rows -> each row's completion tokens. The model's generation config
    is swapped for a blank one with only its EOS, pad and BOS ids meanwhile, so nothing is filled in
    from the folder's generation_config.json: every processor and warper is off (repetition_penalty
    1, top_k 0, no n-gram ban, no minimum length, no suppressed or forced tokens) but ours."""
    from transformers import GenerationConfig
    greedy = temperature == 0
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None if greedy else 0,  # top_k=0: no hidden top-k cut
        repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
        eos_token_id=eos, pad_token_id=pad_id, use_cache=use_cache)
    ids, mask = left_pad(rows, pad_id)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad_id,
                                               bos_token_id=getattr(saved, "bos_token_id", None))
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config)
    finally:
        inner.generation_config = saved
    return list(out[:, ids.shape[1]:].cpu())


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, num_samples: int = 1, temperature: float = 1.0,
           top_p: float = 1.0, max_new_tokens: int = 256, seed: int | list[int] | None = None,
           batch_size: int | None = None, use_cache: bool = True, engine: str = "loop",
           merge_lora: bool = True, cache_implementation: str = "static") -> Completions:
    """Sample `num_samples` completions for each prompt string (already chat-templated, see
    `data.format_prompt`); rows on the CPU. temperature 0 means greedy. Rows are generated about
    `batch_size` at a time (whole prompts with all their samples; default: all). `seed`: an int,
    or one per prompt (`row_seeds`); None draws from the global RNG. engine: "loop" or "generate"
    (the module docstring); `use_cache=False` means `generate` without a KV cache (the slow
    baseline). merge_lora: see `merged_lora`. cache_implementation (loop engine): "static" or
    "dynamic" (DynamicCache); the same tokens either way.
    """
    if engine not in ("loop", "generate"):
        raise ValueError(f"engine must be 'loop' or 'generate', got {engine!r}")
    if cache_implementation not in ("static", "dynamic"):
        raise ValueError(f"cache_implementation must be 'static' or 'dynamic', got {cache_implementation!r}")
    if not use_cache:
        engine = "generate"
    device = next(model.parameters()).device
    eos = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    n = num_samples
    prompt_index = [i for i in range(len(prompts)) for _ in range(n)]
    encoded = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in prompts]
    seeds = row_seeds(seed, len(prompts), n)
    per_batch = max(1, (batch_size or len(prompt_index)) // n)  # prompts per batch

    was_training = model.training
    model.eval()  # no dropout, and the KV cache works with gradient checkpointing
    completions, logprobs = [], []
    try:
        with merged_lora(model) if merge_lora else contextlib.nullcontext():
            for start in range(0, len(prompts), per_batch):
                group = encoded[start:start + per_batch]
                if engine == "generate":
                    if seeds is not None:
                        torch.manual_seed(seeds[start * n])
                    completions += _generate_rows(model, [p for p in group for _ in range(n)],
                                                  temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                                  eos=eos, pad_id=pad_id, use_cache=use_cache, device=device)
                    continue
                gens = None if seeds is None else [torch.Generator(device=device).manual_seed(s)
                                                  for s in seeds[start * n:(start + len(group)) * n]]
                toks, lps = _decode_group(model, group, n, temperature=temperature, top_p=top_p,
                                          max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id,
                                          generators=gens, device=device, cache_implementation=cache_implementation)
                completions += toks
                logprobs += lps
    finally:
        model.train(was_training)

    completion_ids = right_pad(completions, pad_id)  # (N, T)
    completion_mask, truncated = completion_mask_from_eos(completion_ids, eos)
    # Rows shorter than T stopped at an EOS, so the padding never lands inside a mask.
    prompt_ids, prompt_mask = left_pad([encoded[i] for i in prompt_index], pad_id)
    texts = tokenizer.batch_decode([c[m.bool()] for c, m in zip(completion_ids, completion_mask)],
                                   skip_special_tokens=True)
    lp = right_pad(logprobs, 0.0, torch.float32) if logprobs else None  # (N, T): a row's log-probs match its tokens
    return Completions(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, texts, prompt_index, lp)
