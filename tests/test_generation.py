"""Sampling: KV-cached greedy equals uncached greedy token for token (tiny model and the real
SmolLM2-135M), completion masks come from the position of the first EOS (EOS inside, everything
after outside, pad may equal EOS), a completion that never stops is flagged truncated, rows are
prompt-major, and a seed makes sampling repeatable."""
import torch

from pns_mini.data import format_prompt
from pns_mini.generation import completion_mask_from_eos, sample
from pns_mini.modeling import load_model_and_tokenizer


def test_mask_from_first_eos_position_with_pad_equal_to_eos():
    eos = 2  # pad is also 2: token equality with pad would wrongly cut the EOS out of the mask
    ids = torch.tensor([[5, 6, 2, 2, 2],    # stops at t=2; later 2s are padding
                        [5, 2, 7, 2, 9],    # first EOS at t=1; the later EOS does not matter
                        [5, 6, 7, 8, 9]])   # never stops
    mask, truncated = completion_mask_from_eos(ids, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_several_eos_ids():
    mask, truncated = completion_mask_from_eos(torch.tensor([[4, 9, 3, 1]]), [3, 9])
    assert mask.tolist() == [[1, 1, 0, 0]] and not truncated.item()


def _prompts(tok):
    return [format_prompt(tok, q) for q in ["What is 2+3?", "A farmer has 12 cows and buys 5 more. How many cows?"]]


def test_greedy_kv_cache_equals_no_cache_tiny(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    a = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=12, use_cache=True)
    b = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=12, use_cache=False)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.truncated.all()  # a random tiny model does not stop within 12 tokens
    assert a.completion_mask.sum().item() == 2 * 12


def test_greedy_kv_cache_equals_no_cache_smollm2():
    model, tok = load_model_and_tokenizer("smollm2-135m")
    a = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=24, use_cache=True)
    b = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=24, use_cache=False)
    assert torch.equal(a.completion_ids * a.completion_mask, b.completion_ids * b.completion_mask)
    assert a.texts == b.texts and all(len(t) > 0 for t in a.texts)


def test_batch_split_does_not_change_greedy(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    a = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=8)
    b = sample(model, tok, _prompts(tok), temperature=0, max_new_tokens=8, batch_size=1)
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_eos_stops_and_is_inside_mask(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    with torch.no_grad():  # make EOS very likely: inflate its (tied) embedding row
        model.get_output_embeddings().weight[tok.eos_token_id] *= 0
        model.get_output_embeddings().weight[tok.eos_token_id] += model.get_output_embeddings().weight[:50].mean(0) * 0
    # bias via a hook on the logits instead of the tied weights: deterministic and obvious
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o.index_add(-1, torch.tensor([tok.eos_token_id]),
                                                                               torch.full(o.shape[:-1] + (1,), 50.0)))
    try:
        out = sample(model, tok, _prompts(tok), num_samples=2, temperature=1.0, max_new_tokens=6, seed=0)
    finally:
        handle.remove()
    assert out.prompt_index == [0, 0, 1, 1]
    assert not out.truncated.any()
    for ids, mask in zip(out.completion_ids, out.completion_mask):
        first = (ids == tok.eos_token_id).nonzero()[0].item()
        assert mask[first] == 1 and mask[first + 1:].sum() == 0


def test_seed_makes_sampling_repeatable(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    a = sample(model, tok, _prompts(tok), num_samples=3, temperature=1.0, max_new_tokens=6, seed=7)
    b = sample(model, tok, _prompts(tok), num_samples=3, temperature=1.0, max_new_tokens=6, seed=7)
    c = sample(model, tok, _prompts(tok), num_samples=3, temperature=1.0, max_new_tokens=6, seed=8)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
