"""Sampling: KV-cached greedy equals uncached greedy token for token (tiny model and the real
SmolLM2-135M), completion masks come from the position of the first EOS (EOS inside, everything
after outside, pad may equal EOS), a completion that never stops is flagged truncated, rows are
prompt-major, and a seed makes sampling repeatable.

The decode loop (engine "loop") against transformers' `generate`: the same greedy tokens (tiny
model, rows that stop at different lengths, and the real model), the log-probs it returns equal
`modeling.token_logprobs` of the same rows (with a merged LoRA too), merging restores the
weights bit for bit, a prompt's seeded samples do not depend on its batch, and top_p cuts the
distribution as transformers' TopPLogitsWarper does.

Fidelity: a model folder whose generation_config.json ships logits processors
(repetition_penalty 2, no_repeat_ngram_size 2, top_k 20, top_p 0.8, temperature 0.7): greedy is
the plain argmax at every position on both engines, and temperature-1 draws are not confined to
the folder's top_k."""
import json
from pathlib import Path

import pytest
import torch

from pns_mini.data import format_prompt
from pns_mini.generation import can_merge_lora, completion_mask_from_eos, merged_lora, next_tokens, sample
from pns_mini.modeling import load_model_and_tokenizer, token_logprobs


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
    # make EOS very likely: a hook adds 50 to its logit
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


# --------------------------------------------------------------------------- the decode loop
def _questions(n):
    from pns_mini.data import load_problems
    return [p["question"] for p in load_problems("offline", limit=n)]


def _eos_sometimes(model, tok):
    """A forward hook that makes EOS the argmax wherever logit 100 beats logit 101 (the tiny
    model's logits differ by context), so rows stop at different steps."""
    def hook(module, inputs, o):
        bias = torch.where(o[..., 100:101] > o[..., 101:102], 50.0, -50.0)  # (B, L, 1)
        return o.index_add(-1, torch.tensor([tok.eos_token_id]), bias)
    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("num_samples", [1, 3])
def test_loop_greedy_equals_generate_with_rows_stopping_early(tiny_model_dir, num_samples):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    prompts = _questions(6)  # raw questions: rows that differ at their last token
    handle = _eos_sometimes(model, tok)
    try:
        a = sample(model, tok, prompts, num_samples=num_samples, temperature=0, max_new_tokens=16, engine="loop")
        b = sample(model, tok, prompts, num_samples=num_samples, temperature=0, max_new_tokens=16, engine="generate")
    finally:
        handle.remove()
    assert len(set(a.lengths.tolist())) > 1  # rows stopped at different steps
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.completion_ids * a.completion_mask, b.completion_ids * b.completion_mask)


def test_static_and_dynamic_cache_give_the_same_tokens(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    prompts = _questions(3)
    handle = _eos_sometimes(model, tok)
    try:
        a = sample(model, tok, prompts, num_samples=2, temperature=1.0, max_new_tokens=12, seed=1)
        b = sample(model, tok, prompts, num_samples=2, temperature=1.0, max_new_tokens=12, seed=1,
                   cache_implementation="dynamic")
    finally:
        handle.remove()
    assert torch.equal(a.completion_ids, b.completion_ids) and len(set(a.lengths.tolist())) > 1
    assert (a.logprobs - b.logprobs).abs().max().item() < 1e-5


def test_loop_greedy_equals_generate_smollm2():
    model, tok = load_model_and_tokenizer("smollm2-135m")
    prompts = [format_prompt(tok, q) for q in _questions(3)]
    a = sample(model, tok, prompts, temperature=0, max_new_tokens=24, engine="loop")
    b = sample(model, tok, prompts, temperature=0, max_new_tokens=24, engine="generate")
    assert a.texts == b.texts


def _lora(model_dir, seed=0):
    """The tiny model with a LoRA whose B matrices are random (peft starts them at 0)."""
    model, tok = load_model_and_tokenizer(model_dir, lora_r=4, lora_alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, tok


def test_merged_lora_restores_weights_and_matches_unmerged_logprobs(tiny_model_dir):
    model, tok = _lora(tiny_model_dir)
    assert can_merge_lora(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [format_prompt(tok, q) for q in _questions(2)]
    out = sample(model, tok, prompts, num_samples=3, temperature=1.0, max_new_tokens=12, seed=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the originals are back, bit for bit
    T = out.completion_ids.shape[1]
    with torch.no_grad():
        scored = token_logprobs(model, out.input_ids, out.attention_mask, T, temperature=1.0)  # unmerged
    m = out.completion_mask.bool()
    assert (out.logprobs[m] - scored[m]).abs().max().item() < 1e-4
    # and the merge changed nothing the adapter-on model would not have sampled
    unmerged = sample(model, tok, prompts, num_samples=3, temperature=1.0, max_new_tokens=12, seed=3, merge_lora=False)
    assert torch.equal(out.completion_ids, unmerged.completion_ids)


def test_merged_lora_puts_every_weight_back_when_merging_fails_halfway(tiny_model_dir, monkeypatch):
    from peft.tuners.lora import Linear
    model, _ = _lora(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls, real = [], Linear.get_delta_weight

    def fails_on_the_third(self, adapter):  # e.g. out of memory on the third layer's copy
        calls.append(adapter)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(self, adapter)
    monkeypatch.setattr(Linear, "get_delta_weight", fails_on_the_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        with merged_lora(model):
            pass
    after = model.state_dict()
    assert len(calls) == 3 and all(torch.equal(before[k], after[k]) for k in before)


def test_merging_does_nothing_with_the_adapter_disabled(tiny_model_dir):
    model, tok = _lora(tiny_model_dir)
    with model.disable_adapter():
        assert not can_merge_lora(model)
        with merged_lora(model):
            pass


def test_greedy_logprobs_equal_token_logprobs(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    out = sample(model, tok, [format_prompt(tok, q) for q in _questions(3)], temperature=0, max_new_tokens=10)
    with torch.no_grad():
        scored = token_logprobs(model, out.input_ids, out.attention_mask, out.completion_ids.shape[1])
    m = out.completion_mask.bool()
    assert (out.logprobs[m] - scored[m]).abs().max().item() < 1e-4


def test_per_prompt_seeds_do_not_depend_on_the_batch(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    prompts = [format_prompt(tok, q) for q in _questions(3)]
    whole = sample(model, tok, prompts, num_samples=2, temperature=1.0, max_new_tokens=8, seed=[11, 12, 13])
    alone = sample(model, tok, prompts[2:], num_samples=2, temperature=1.0, max_new_tokens=8, seed=[13])
    split = sample(model, tok, prompts, num_samples=2, temperature=1.0, max_new_tokens=8, seed=[11, 12, 13],
                   batch_size=2)
    assert whole.texts[4:] == alone.texts and whole.texts == split.texts
    assert whole.texts[0] != whole.texts[1]  # the samples of one prompt are different draws


def test_top_p_keeps_the_nucleus_like_transformers():
    from transformers.generation.logits_process import TopPLogitsWarper
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    warped = TopPLogitsWarper(0.7)(None, logits.clone())
    kept_hf = torch.isfinite(warped)
    lp = torch.log_softmax(logits, -1)
    draws = torch.stack([next_tokens(lp, 1.0, 0.7, None) for _ in range(400)], 1)  # (4, 400)
    for row in range(4):
        assert kept_hf[row, draws[row]].all()  # never outside transformers' nucleus
        assert set(draws[row].tolist()) == set(kept_hf[row].nonzero().squeeze(-1).tolist()) or \
            len(set(draws[row].tolist())) >= kept_hf[row].sum().item() - 1  # and (nearly) all of it is drawn


# --------------------------------------------------------------------------- fidelity
@pytest.fixture(scope="module")
def processor_model_dir(tmp_path_factory, tokenizer):
    """The tiny model saved with a generation_config.json that ships logits processors."""
    from conftest import build_tiny_model
    path = tmp_path_factory.mktemp("tiny-processors")
    build_tiny_model(tokenizer, seed=5).save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = json.loads((Path(path) / "generation_config.json").read_text())
    config.update(repetition_penalty=2.0, no_repeat_ngram_size=2, top_k=20, top_p=0.8, temperature=0.7,
                  do_sample=True, min_new_tokens=4)
    (Path(path) / "generation_config.json").write_text(json.dumps(config))
    return str(path)


def _argmax_decode(model, prompt_ids, steps):
    """Plain greedy without any cache or processor: the argmax of the model's logits, step by step."""
    ids = prompt_ids[None]
    for _ in range(steps):
        with torch.no_grad():
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt_ids):]


@pytest.mark.parametrize("engine", ["loop", "generate"])
def test_folder_processors_never_apply_to_greedy(processor_model_dir, engine):
    model, tok = load_model_and_tokenizer(processor_model_dir)
    assert model.generation_config.repetition_penalty == 2.0  # the folder's settings were loaded
    prompts = [format_prompt(tok, q) for q in _questions(2)]
    out = sample(model, tok, prompts, temperature=0, max_new_tokens=24, engine=engine)
    for i in range(len(prompts)):
        expected = _argmax_decode(model, out.prompt_ids[i][out.prompt_mask[i].bool()], 24)
        assert out.completion_ids[i].tolist() == expected.tolist()


@pytest.mark.parametrize("engine", ["loop", "generate"])
def test_folder_top_k_does_not_confine_sampling(processor_model_dir, engine):
    model, tok = load_model_and_tokenizer(processor_model_dir)
    out = sample(model, tok, [format_prompt(tok, "What is 2+3?")], num_samples=64, temperature=1.0,
                 max_new_tokens=1, seed=0, engine=engine)
    assert len(set(out.completion_ids[:, 0].tolist())) > 20  # a top_k of 20 would allow at most 20


def test_evaluate_greedy_records_are_the_plain_argmax(processor_model_dir, tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluate.py lives at the repo root
    import evaluate
    evaluate.main(evaluate.Config(model=processor_model_dir, benchmarks="offline", limit=2, max_completion_length=16,
                                  batch_size=2, output_dir=str(tmp_path / "eval")))
    model, tok = load_model_and_tokenizer(processor_model_dir)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        prompt_ids = torch.tensor(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        expected = _argmax_decode(model, prompt_ids, row["num_tokens"])
        assert row["completion"] == tok.decode(expected, skip_special_tokens=True)


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    lp = probs.log()[None].expand(4000, -1)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    draws = next_tokens(lp, 1.0, 1.0, gens)
    freq = torch.bincount(draws, minlength=5).float() / 4000
    assert freq[1] == 0 and (freq - probs).abs().max() < 0.03  # 3 sigma of 4000 draws is ~0.024 at p=0.5


def test_draws_are_the_exact_inverse_cdf_on_a_large_vocabulary():
    # 100,000 tokens of p = 5e-6 after one of 0.5: an fp32 CDF past 0.5 holds each boundary only
    # to 6e-8, which moves ~0.15% of the draws to a neighbour (expected here: ~6 of 4096 draws)
    lp = torch.cat([torch.tensor([0.5]), torch.full((100_000,), 5e-6)]).log()
    cdf = lp.exp().double().cumsum(0)  # the exact CDF of the fp32 probabilities
    for start in range(0, 4096, 64):
        seeds = range(start, start + 64)
        draws = next_tokens(lp[None].expand(64, -1), 1.0, 1.0, [torch.Generator().manual_seed(i) for i in seeds])
        u = torch.cat([torch.rand(1, generator=torch.Generator().manual_seed(i)) for i in seeds]).double()
        assert torch.equal(draws, torch.searchsorted(cdf, ((1 - u) * cdf[-1])[:, None]).squeeze(-1))
