"""Batched, KV-cached sampling with Hugging Face `generate`, and completion masks built from the
POSITION of the first EOS.

Rows are prompt-major: with prompts [p0, p1] and n=3 the rows are p0,p0,p0,p1,p1,p1, which is the
grouping `losses.group_advantages` expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Completions:
    prompt_ids: torch.Tensor       # (N, P) left-padded prompt tokens
    prompt_mask: torch.Tensor      # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor   # (N, T) sampled tokens, padded after the first EOS
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the first EOS, 0 after
    truncated: torch.Tensor        # (N,) bool: no EOS within max_new_tokens
    texts: list[str]               # decoded completions (masked tokens only, special tokens dropped)
    prompt_index: list[int]        # row -> index of its prompt in the input list

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
    """(N, T) ids -> (mask (N, T) long, truncated (N,) bool).

    mask[i, t] = 1 for t <= position of the first EOS in row i (the EOS itself is kept, so the
    model is trained to stop), 0 after. A row without EOS is all ones and `truncated`. Built from
    positions, not from token == pad: pad may equal EOS.
    """
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


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, num_samples: int = 1, temperature: float = 1.0,
           top_p: float = 1.0, max_new_tokens: int = 256, seed: int | None = None,
           batch_size: int | None = None, use_cache: bool = True) -> Completions:
    """Sample `num_samples` completions for each prompt string (already chat-templated, see
    `data.format_prompt`). temperature 0 means greedy. Rows are generated `batch_size` at a time
    (default: all), each batch left-padded; the KV cache is used unless `use_cache=False`
    (the slow baseline in benchmarks/generation.py). Returns rows on the CPU.
    """
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    eos = eos_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    prompt_index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    encoded = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in prompts]
    batch_size = batch_size or len(prompt_index)

    from transformers import GenerationConfig
    greedy = temperature == 0
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None if greedy else 0,  # top_k=0: no hidden top-k cut
        eos_token_id=eos, pad_token_id=pad_id, use_cache=use_cache)

    was_training = model.training
    model.eval()  # generation in eval mode: no dropout, and the KV cache works with checkpointing
    completions = []
    try:
        for start in range(0, len(prompt_index), batch_size):
            rows = [encoded[i] for i in prompt_index[start:start + batch_size]]
            ids, mask = left_pad(rows, pad_id)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_config)
            completions.extend(out[:, ids.shape[1]:].cpu())  # each (T_batch,)
    finally:
        model.train(was_training)

    T = max(c.shape[0] for c in completions)
    completion_ids = torch.full((len(completions), T), pad_id, dtype=torch.long)
    for i, c in enumerate(completions):
        completion_ids[i, :c.shape[0]] = c
    completion_mask, truncated = completion_mask_from_eos(completion_ids, eos)
    # A batch that stopped early leaves rows shorter than T padded with pad; those rows had an
    # EOS (that is why the batch stopped), so padding never lands inside a mask.
    prompt_ids, prompt_mask = left_pad([encoded[i] for i in prompt_index], pad_id)
    texts = tokenizer.batch_decode([c[m.bool()] for c, m in zip(completion_ids, completion_mask)],
                                   skip_special_tokens=True)
    return Completions(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, texts, prompt_index)
