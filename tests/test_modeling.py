"""The model layer: the embedded model loads offline (from the cache the second time), names
that cannot load give one clear error, `token_logprobs` equals a naive per-position loop (also
with left padding), the reference (adapter disabled) reproduces the base logits exactly, and one
LoRA step on a 4-bit base moves the LoRA weights and lowers the loss."""
import subprocess
import sys
import time

import pytest
import torch

from pns_mini.modeling import (ModelLoadError, load_model_and_tokenizer, reference_model, save_atomic,
                               token_logprobs, trainable_parameters)


def test_embedded_model_loads_offline_from_cache(embedded_dir):
    # embedded_dir converted the GGUF (once); a fresh process now loads from the cache.
    code = ("import time; t=time.time(); from pns_mini.modeling import load_model_and_tokenizer as L; "
            "m,t2=L('smollm2-135m'); print(m.config.num_hidden_layers, t2.eos_token, round(time.time()-t,1))")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    layers, eos, _ = out.stdout.split()
    assert layers == "30" and eos == "<|im_end|>"
    assert time.time() - t < 60  # loads from the cache, no 30 s conversion (includes interpreter start)


def test_unknown_name_gives_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="tried Hub id 'no-such-org/no-such-model'.*HF_HUB_OFFLINE=1"):
        load_model_and_tokenizer("no-such-org/no-such-model")


def _naive_logprobs(model, ids, mask, T):
    """One forward per position on the unpadded prefix: the slow, obvious definition."""
    out = []
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        row = []
        for t in range(len(real) - T, len(real)):
            logits = model(input_ids=real[None, :t]).logits[0, -1].float()
            row.append(torch.log_softmax(logits, -1)[real[t]])
        out.append(torch.stack(row))
    return torch.stack(out)


def test_token_logprobs_matches_naive_loop_with_left_padding(tiny_model_dir):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    ids[1, :3] = tok.pad_token_id
    with torch.no_grad():
        fast = token_logprobs(model, ids, mask, num_completion_tokens=4)
        slow = _naive_logprobs(model, ids, mask, 4)
    assert fast.shape == (2, 4)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_adapter_disabled_reproduces_base_logits(tiny_model_dir):
    base, _ = load_model_and_tokenizer(tiny_model_dir)
    policy, _ = load_model_and_tokenizer(tiny_model_dir, lora_r=4)
    with torch.no_grad():  # move the adapter away from its zero init so it changes the logits
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    ids = torch.randint(5, 1000, (2, 7))
    with torch.no_grad():
        base_logits = base(ids).logits
        assert not torch.allclose(policy(ids).logits, base_logits)
        with reference_model(policy):
            ref_logits = policy(ids).logits
    assert torch.equal(ref_logits, base_logits)


def test_lora_step_on_4bit_base_moves_weights_and_lowers_loss(tiny_model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(tiny_model_dir, load_in_4bit=True, lora_r=8, gradient_checkpointing=True)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    model.train()
    ids = torch.randint(5, 1000, (2, 16))
    params = trainable_parameters(model)
    assert params and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    loss0 = model(input_ids=ids, labels=ids).loss
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = model(input_ids=ids, labels=ids).loss
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    assert loss1 < loss0
    # the saved adapter reloads by itself (its base is recorded) and reproduces the policy
    out = save_atomic(model, tok, tmp_path / "adapter")
    again, _ = load_model_and_tokenizer(str(out), load_in_4bit=True)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model.eval()(ids).logits)
