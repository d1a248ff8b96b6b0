"""Parity with TRL 1.16 (our numbers' oracle): `pns_mini.losses` and `modeling.token_logprobs`
against the code inside TRL's DPOTrainer and GRPOTrainer, called on the same inputs.

How TRL is called: a trainer made with `object.__new__` (its __init__ never runs: no model load,
no dataset, no Accelerator) gets only the attributes its loss method reads, and the method runs
unmodified. Two kinds of model are passed to it:
- a stub whose forward returns a given (rows, positions) tensor of per-token log-probs as a
  parameter, in the shape TRL's fused LM head returns (zero where the label is -100), so the loss
  AND its gradient are compared with ours on exactly the same numbers;
- the tiny random Llama with a LoRA, patched with TRL's own `add_fused_lm_head`, so TRL's
  log-prob path (no position ids, LM head over every position, chunked log-softmax) is compared
  with ours end to end, loss and LoRA gradients included. (Without position ids a left-padded
  row's real tokens sit at positions shifted by its pad count; RoPE attention depends only on
  position differences within a row, so the two agree to float rounding, ~1e-6, not exactly.)

The installed TRL must be the version pinned in requirements-bench.txt: any other version, or
none, makes this file fail at collection (never skip).

What must agree (float32 tolerance):
- DPO (DPOTrainer._compute_loss): "sigmoid" and "hinge" losses, gradients and the logged
  rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen.
- GRPO (GRPOTrainer._compute_loss): "grpo", "dr_grpo" and "dapo" with and without old log-probs
  (num_iterations 1 or > 1), with and without the k3 KL, asymmetric clipping (epsilon_high); the
  loss, its gradient and the logged kl and clip ratios. Under gradient accumulation with equal
  micro-batches, the sum of TRL's micro-batch losses equals ours with the global normalizer.
- GRPOTrainer._get_per_token_logps_and_entropies on the tiny model (left-padded prompts,
  temperature 0.7) equals token_logprobs; DPOTrainer._compute_loss with the reference as the
  adapter turned off equals train_dpo.py's sequence_logps + dpo_loss.
- Group advantages: TRL's formula (grpo_trainer.py lines 2765-2787, replicated: it sits inside the
  generation method) equals group_advantages for scale_rewards group / batch / none.

Where we deliberately differ, the test says so and asserts the documented relation:
- IPO: we feed sequence log-prob SUMS; TRL 1.16 divides each side's log-ratio by its completion
  length (dpo_trainer.py line ~1399). Feeding per-token MEANS to our dpo_loss gives TRL's IPO.
- label_smoothing: TRL 1.16's "sigmoid" IGNORES it (line ~1388: -logsigmoid(beta * delta)); the
  conservative-DPO formula we implement (Mitchell 2023) survives in TRL only inside "aot" (line
  ~1453), which sorts the log-ratios first: on pairs already in sorted order the two agree.
- RPO: TRL 1.16 has no rpo_alpha; its equivalent is loss_type ["sigmoid", "sft"] with
  loss_weights [1, alpha], whose "sft" term is one token-level mean over all chosen tokens of the
  batch. Ours is per-sequence length-normalised; the two agree when the chosen lengths are equal.
- GRPO under UNEVEN micro-batches: TRL divides "grpo"/"dr_grpo" by the micro-batch's rows and the
  number of accumulation steps, so its summed loss is the mean of micro-batch means, not the
  full-batch loss; ours (global normalizer) is the full-batch loss. "dapo" agrees either way.
- Zero-spread groups: TRL leaks (r - mean) / (std + 1e-4) ~ 6e-4 for three rewards of 0.9 in
  float32; ours is exactly 0. TRL's nanstd of that group is ~7e-8 (torch.std gives 0), so TRL's
  frac_reward_zero_std does not count it while our zero_std_fraction does.
- DPO tokenization of a conversational pair (synthesize.py's format): the prompt ids agree; TRL's
  completion ends with the chat template's "\\n" after <|im_end|>, ours stops at the EOS (the token
  generation stops on), so TRL's completion has one more token.
"""
import contextlib
import copy
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

# The trainer-less calls read private attributes of one TRL version, pinned in requirements-bench.txt.
# Any other version (or none) FAILS this file instead of skipping it: a skipped oracle would let
# every parity claim in losses.py and docs/design.md go unchecked without anyone noticing.
PINNED_TRL = next(line.split("==")[1].strip() for line in
                  (Path(__file__).resolve().parents[1] / "requirements-bench.txt").read_text().splitlines()
                  if line.startswith("trl=="))
try:
    import trl
except ImportError:
    pytest.fail(f"TRL parity tests need trl=={PINNED_TRL}, which is not installed: "
                f"pip install -r requirements-bench.txt (make setup does this)", pytrace=False)
if trl.__version__ != PINNED_TRL:
    pytest.fail(f"TRL parity is pinned to trl=={PINNED_TRL} (requirements-bench.txt) but trl "
                f"{trl.__version__} is installed: install the pin, or re-read TRL's dpo_trainer.py / "
                f"grpo_trainer.py, update this file and the pin together", pytrace=False)

from trl import DPOTrainer, GRPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head, nanstd  # noqa: E402

from pns_mini.losses import dpo_loss, group_advantages, grpo_loss, rpo_nll_loss, zero_std_fraction  # noqa: E402
from pns_mini.modeling import load_model_and_tokenizer, reference_model, token_logprobs  # noqa: E402

LOSS_TYPES = ["grpo", "dr_grpo", "dapo"]
MAX_LEN = 8  # max_completion_length of the GRPO cases (dr_grpo's constant)


# ---------------------------------------------------------------------------------------------
# Trainer-less TRL: the attributes its loss methods read, a one-process accelerator, stub models
# ---------------------------------------------------------------------------------------------
class OneProcess:
    """What the loss methods call on `self.accelerator`, for a single process on CPU."""
    num_processes, process_index, is_main_process, sync_gradients = 1, 0, True, True
    device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, model):
        return model


def fresh_metrics():
    return {"train": defaultdict(list), "eval": defaultdict(list)}


def trl_grpo(model, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=None, gas=1, temperature=1.0):
    """A GRPOTrainer whose __init__ never ran, set up as GRPOConfig would set these fields."""
    t = object.__new__(GRPOTrainer)
    t.model, t.accelerator, t._metrics = model, OneProcess(), fresh_metrics()
    t.loss_type, t.beta, t.temperature = loss_type, beta, temperature
    t.epsilon_low, t.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    t.max_completion_length, t.current_gradient_accumulation_steps = MAX_LEN, gas
    t.top_entropy_quantile, t.importance_sampling_level, t.off_policy_mask_threshold = 1.0, "token", None
    t.aux_loss_enabled, t._entropy_bonus_enabled = False, False
    t.use_vllm, t.vllm_importance_sampling_correction = False, False
    t.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=gas)
    return t


def trl_dpo(model, loss_types, beta, label_smoothing=0.0, loss_weights=None, precomputed_ref=True):
    """A DPOTrainer whose __init__ never ran (reverse-KL DPO, no WPO weighting, no ld_alpha)."""
    t = object.__new__(DPOTrainer)
    t.model, t.accelerator, t._metrics = model, OneProcess(), fresh_metrics()
    t.loss_types, t.loss_weights = loss_types, loss_weights or [1.0] * len(loss_types)
    t.beta, t.label_smoothing, t.precompute_ref_logps, t.ref_model = beta, label_smoothing, precomputed_ref, None
    t.f_divergence_type, t.ld_alpha, t.use_weighting, t.aux_loss_enabled = "reverse_kl", None, False, False
    t._total_train_tokens, t._tp_size = 0, 1
    t.args = types.SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05, gradient_checkpointing=False)
    return t


class GivenLogps(torch.nn.Module):
    """Stands in for a model patched with TRL's fused LM head: returns `logps` (a parameter) at
    the last positions of `log_probs`, zero where the shifted label is -100, as TRL's head does."""

    def __init__(self, logps: torch.Tensor):
        super().__init__()
        self.logps = torch.nn.Parameter(logps.clone())

    def forward(self, input_ids, attention_mask, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head, "TRL's loss must ask for the fused LM head"
        rows, L = input_ids.shape
        lead = torch.zeros(rows, L - 1 - self.logps.shape[1])
        keep = labels[:, 1:] != -100  # (rows, L-1)
        log_probs = torch.cat([lead, self.logps], dim=1) * keep
        zeros = torch.zeros(rows, L - 1)
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=keep & False)


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------
def dpo_case(B=4, L=12, seed=0, equal_chosen_lengths=False):
    """Per-token log-probs (2B, L-1) for chosen rows then rejected rows, a completion mask (2B, L)
    over the full sequence (TRL's collator layout), and reference sequence sums (B,) each."""
    g = torch.Generator().manual_seed(seed)
    token_logps = -3 * torch.rand(2 * B, L - 1, generator=g)
    completion_mask = torch.zeros(2 * B, L, dtype=torch.long)
    for i in range(2 * B):
        start = int(torch.randint(2, 5, (1,), generator=g))
        end = L - 1 if (equal_chosen_lengths and i < B) else int(torch.randint(start + 2, L + 1, (1,), generator=g))
        if equal_chosen_lengths and i < B:
            start = 3
        completion_mask[i, start:end] = 1
    ref_chosen = -10 * torch.rand(B, generator=g)
    ref_rejected = -10 * torch.rand(B, generator=g)
    return token_logps, completion_mask, ref_chosen, ref_rejected


def run_trl_dpo(token_logps, completion_mask, ref_chosen, ref_rejected, loss_types, beta, **kw):
    model = GivenLogps(token_logps).train()
    trainer = trl_dpo(model, loss_types, beta, **kw)
    inputs = {"input_ids": torch.ones_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), model.logps.grad, {k: v[0] for k, v in trainer._metrics["train"].items()}


def our_sequence_sums(token_logps, completion_mask):
    """(leaf with grad, (2B,) sums over completion tokens, (2B,) token counts)."""
    x = token_logps.clone().requires_grad_(True)
    shifted = completion_mask[:, 1:].float()  # position t of log_probs predicts token t + 1
    return x, (x * shifted).sum(-1), shifted.sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_gradient_and_logs_match_trl(loss_type, beta):
    case = dpo_case(seed=1)
    trl_loss, trl_grad, logs = run_trl_dpo(*case, [loss_type], beta)

    token_logps, completion_mask, ref_c, ref_r = case
    x, sums, _ = our_sequence_sums(token_logps, completion_mask)
    B = ref_c.numel()
    losses, chosen_rewards, rejected_rewards = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, loss_type)
    loss = losses.mean()  # TRL: per_sequence_loss.mean()
    loss.backward()

    torch.testing.assert_close(loss.detach(), trl_loss)
    torch.testing.assert_close(x.grad, trl_grad)
    assert trl_grad.abs().sum() > 0  # a gradient that can disagree
    assert logs["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), rel=1e-6)
    assert logs["rewards/rejected"] == pytest.approx(rejected_rewards.mean().item(), rel=1e-6)
    assert logs["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), rel=1e-6)
    assert logs["rewards/accuracies"] == (chosen_rewards > rejected_rewards).float().mean().item()
    assert logs["logps/chosen"] == pytest.approx(sums[:B].mean().item(), rel=1e-6)


def test_dpo_ipo_equals_trl_when_fed_per_token_means():
    """Deliberate difference: our IPO takes sums; TRL 1.16 length-normalises (means)."""
    beta = 0.1
    case = dpo_case(seed=2)
    trl_loss, trl_grad, _ = run_trl_dpo(*case, ["ipo"], beta)
    token_logps, completion_mask, ref_c, ref_r = case
    B = ref_c.numel()

    _, sums, counts = our_sequence_sums(token_logps, completion_mask)
    with_sums = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, "ipo")[0].mean()
    assert not torch.isclose(with_sums.detach(), trl_loss, rtol=1e-3)  # the two conventions really differ here

    x, sums, counts = our_sequence_sums(token_logps, completion_mask)
    means, ref_means = sums / counts, torch.cat([ref_c, ref_r]) / counts  # per-token means, both policies
    loss = dpo_loss(means[:B], means[B:], ref_means[:B], ref_means[B:], beta, "ipo")[0].mean()
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss)
    torch.testing.assert_close(x.grad, trl_grad)


def test_dpo_label_smoothing_trl_sigmoid_ignores_it_and_aot_holds_our_formula():
    """Deliberate difference: TRL 1.16 dropped label smoothing from "sigmoid"."""
    beta, ls = 0.1, 0.2
    token_logps, completion_mask, ref_c, ref_r = dpo_case(seed=3)
    B = ref_c.numel()
    _, sums, _ = our_sequence_sums(token_logps, completion_mask)
    trl_sigmoid, _, _ = run_trl_dpo(token_logps, completion_mask, ref_c, ref_r, ["sigmoid"], beta, label_smoothing=ls)
    plain = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, "sigmoid", 0.0)[0].mean()
    smoothed = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, "sigmoid", ls)[0].mean()
    torch.testing.assert_close(trl_sigmoid, plain.detach())
    assert not torch.isclose(trl_sigmoid, smoothed.detach(), rtol=1e-3)

    # "aot" sorts (pc - pr) and (rc - rr) separately; choose reference sums so both are
    # ascending in the same pair order: its sort is then the identity and it is our cDPO loss.
    policy_margin = sums[:B] - sums[B:]
    order = policy_margin.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(B)
    ref_r = torch.full((B,), -20.0)
    ref_c = ref_r + rank.float()  # reference margins 0, 1, 2, ... in the policy margins' order
    trl_aot, trl_grad, _ = run_trl_dpo(token_logps, completion_mask, ref_c, ref_r, ["aot"], beta, label_smoothing=ls)
    x, sums, _ = our_sequence_sums(token_logps, completion_mask)
    ours = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, "sigmoid", ls)[0].mean()
    ours.backward()
    torch.testing.assert_close(ours.detach(), trl_aot)
    torch.testing.assert_close(x.grad, trl_grad)


@pytest.mark.parametrize("equal_lengths", [True, False])
def test_rpo_term_vs_trl_sigmoid_plus_sft(equal_lengths):
    """TRL 1.16's RPO: loss_type ["sigmoid", "sft"], loss_weights [1, alpha] (token-level NLL)."""
    beta, alpha = 0.1, 0.7
    token_logps, completion_mask, ref_c, ref_r = dpo_case(seed=4, equal_chosen_lengths=equal_lengths)
    B = ref_c.numel()
    trl_loss, trl_grad, _ = run_trl_dpo(token_logps, completion_mask, ref_c, ref_r, ["sigmoid", "sft"], beta,
                                        loss_weights=[1.0, alpha])
    x, sums, counts = our_sequence_sums(token_logps, completion_mask)
    dpo_part = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta, "sigmoid")[0].mean()
    ours = dpo_part + alpha * rpo_nll_loss(sums[:B], counts[:B])
    token_level = dpo_part + alpha * (-sums[:B].sum() / counts[:B].sum())  # TRL's "sft": one mean over tokens
    torch.testing.assert_close(token_level.detach(), trl_loss)
    if equal_lengths:
        ours.backward()
        torch.testing.assert_close(ours.detach(), trl_loss)
        torch.testing.assert_close(x.grad, trl_grad)
    else:
        assert not torch.isclose(ours.detach(), trl_loss, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------
def grpo_case(N=6, T=MAX_LEN, seed=0):
    """logps, old, ref (N, T), advantages (N,), completion mask (N, T) with uneven lengths."""
    g = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(N, T, generator=g)
    old = logps + 0.3 * torch.randn(N, T, generator=g)  # ratios well outside [0.8, 1.28]: clipping happens
    ref = logps + 0.2 * torch.randn(N, T, generator=g)
    advantages = torch.randn(N, generator=g)
    mask = torch.ones(N, T, dtype=torch.long)
    for i, length in enumerate(torch.randint(1, T + 1, (N,), generator=g).tolist()):
        mask[i, length:] = 0
    return logps, old, ref, advantages, mask


def run_trl_grpo(logps, old, ref, advantages, mask, *, num_items_in_batch=None, **kw):
    model = GivenLogps(logps).train()
    trainer = trl_grpo(model, **kw)
    N, T = logps.shape
    inputs = {"prompt_ids": torch.ones(N, 3, dtype=torch.long), "prompt_mask": torch.ones(N, 3, dtype=torch.long),
              "completion_ids": torch.ones(N, T, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages,
              "num_items_in_batch": torch.tensor(float(mask.sum()) if num_items_in_batch is None else num_items_in_batch)}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return loss.detach(), model.logps.grad, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("with_old", [False, True], ids=["num_iterations=1", "num_iterations>1"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_gradient_and_logs_match_trl(loss_type, with_old, beta):
    logps, old, ref, adv, mask = grpo_case(seed=5)
    old = old if with_old else None
    kw = dict(loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=0.28)
    trl_loss, trl_grad, logs = run_trl_grpo(logps, old, ref if beta else None, adv, mask, **kw)

    x = logps.clone().requires_grad_(True)
    loss, stats = grpo_loss(x, old, ref, adv, mask, epsilon=0.2, epsilon_high=0.28, beta=beta,
                            loss_type=loss_type, max_completion_length=MAX_LEN)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss)
    torch.testing.assert_close(x.grad, trl_grad)
    assert trl_grad.abs().sum() > 0
    if beta:
        assert logs["kl"] == pytest.approx(stats["kl"], rel=1e-5)
    assert logs["clip_ratio/low_mean"] == pytest.approx(stats["clip_ratio/low"], abs=1e-7)
    assert logs["clip_ratio/high_mean"] == pytest.approx(stats["clip_ratio/high"], abs=1e-7)
    assert logs["clip_ratio/region_mean"] == pytest.approx(stats["clip_ratio"], abs=1e-7)
    if with_old:
        assert stats["clip_ratio"] > 0  # the case exercises clipping


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_accumulation_equal_micro_batches_match_trl(loss_type):
    """Two micro-batches of 3 rows: TRL's summed micro losses (gas=2) = ours with the global D."""
    logps, old, ref, adv, mask = grpo_case(seed=6)
    total_tokens = float(mask.sum())
    global_d = {"grpo": 6.0, "dr_grpo": 6.0 * MAX_LEN, "dapo": total_tokens}[loss_type]
    trl_sum, ours_sum = 0.0, 0.0
    for sl in (slice(0, 3), slice(3, 6)):
        trl_loss, _, _ = run_trl_grpo(logps[sl], old[sl], ref[sl], adv[sl], mask[sl], loss_type=loss_type, beta=0.04,
                                      gas=2, num_items_in_batch=total_tokens)
        trl_sum += trl_loss
        ours_sum += grpo_loss(logps[sl], old[sl], ref[sl], adv[sl], mask[sl], beta=0.04, loss_type=loss_type,
                              max_completion_length=MAX_LEN, normalizer=global_d)[0]
    full = grpo_loss(logps, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=MAX_LEN)[0]
    torch.testing.assert_close(ours_sum, trl_sum)
    torch.testing.assert_close(ours_sum, full)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_accumulation_uneven_micro_batches_documented_relation(loss_type):
    """Deliberate difference: micro-batches of 4 and 2 rows. Ours sums to the full-batch loss;
    TRL's "grpo"/"dr_grpo" sum is the MEAN of the micro-batch losses; "dapo" agrees."""
    logps, old, ref, adv, mask = grpo_case(seed=7)
    total_tokens = float(mask.sum())
    global_d = {"grpo": 6.0, "dr_grpo": 6.0 * MAX_LEN, "dapo": total_tokens}[loss_type]
    parts = (slice(0, 4), slice(4, 6))
    trl_losses = [run_trl_grpo(logps[s], old[s], ref[s], adv[s], mask[s], loss_type=loss_type, beta=0.04, gas=2,
                               num_items_in_batch=total_tokens)[0] for s in parts]
    ours = sum(grpo_loss(logps[s], old[s], ref[s], adv[s], mask[s], beta=0.04, loss_type=loss_type,
                         max_completion_length=MAX_LEN, normalizer=global_d)[0] for s in parts)
    full = grpo_loss(logps, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=MAX_LEN)[0]
    torch.testing.assert_close(ours, full)
    if loss_type == "dapo":
        torch.testing.assert_close(sum(trl_losses), full)
    else:
        micro_means = [grpo_loss(logps[s], old[s], ref[s], adv[s], mask[s], beta=0.04, loss_type=loss_type,
                                 max_completion_length=MAX_LEN)[0] for s in parts]  # each micro-batch's own D
        torch.testing.assert_close(sum(trl_losses), sum(micro_means) / 2)
        assert not torch.isclose(sum(trl_losses), full, rtol=1e-4)


def trl_advantages(rewards: torch.Tensor, G: int, scale_rewards: str) -> torch.Tensor:
    """TRL 1.16 grpo_trainer.py lines 2765-2787 ("sum_then_normalize", num_generations > 1),
    copied: they sit inside _generate_and_score_completions, which needs a generation run."""
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:  # batch
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return advantages, torch.isclose(std_rewards, torch.zeros_like(std_rewards))


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_match_trl_formula_except_zero_spread_leak(scale_rewards):
    G = 3
    rewards = torch.tensor([1.5, -1.0, 3.2,  # spread
                            0.9, 0.9, 0.9,   # zero spread; 0.9 is inexact in float32, its mean of 3 rounds
                            -1.0, 2.5, 0.5])  # spread
    theirs, is_std_zero = trl_advantages(rewards, G, scale_rewards)
    ours = group_advantages(rewards, G, scale_rewards)
    spread = torch.tensor([True] * 3 + [False] * 3 + [True] * 3)
    torch.testing.assert_close(ours[spread], theirs[spread])
    assert torch.equal(ours[~spread], torch.zeros(3))  # ours: exactly 0
    if scale_rewards == "group":
        assert 0 < theirs[~spread].abs().max() < 1e-2  # TRL: a small leak (r - mean ~ 6e-8, / (std + 1e-4))
        # Zero-spread counting differs on the same group: torch.std of three equal 0.9s is exactly 0
        # (ours: zero spread), TRL's nanstd gives ~7e-8 > isclose's atol 1e-8 (TRL: not zero spread).
        assert zero_std_fraction(rewards, G) == pytest.approx(1 / 3)
        assert is_std_zero.float().mean().item() == 0.0


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model: TRL's fused LM head vs our token_logprobs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_pair(tiny_model_dir):
    """A factory temperature -> (ours, TRL's): two identical LoRA models whose adapter is NOT zero
    (policy != reference); TRL's copy carries TRL's fused LM head at that temperature."""
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(tiny_model_dir, lora_r=4, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()

    def make(temperature):
        theirs = copy.deepcopy(model)
        add_fused_lm_head(theirs.get_base_model(), temperature=temperature,
                          outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        return model, theirs.eval(), tok
    return make


def rollout_batch(tok, T=6, seed=0):
    """3 left-padded prompts of different lengths + right-padded completions with an EOS."""
    g = torch.Generator().manual_seed(seed)
    prompts = [tok(text, add_special_tokens=False)["input_ids"] for text in
               ("What is 2 + 3?", "Tom has 4 bags of 5 apples. How many apples?", "Hi")]
    P = max(map(len, prompts))
    prompt_ids = torch.full((3, P), tok.pad_token_id)
    prompt_mask = torch.zeros(3, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
    completion_ids = torch.randint(100, 5000, (3, T), generator=g)
    completion_mask = torch.ones(3, T, dtype=torch.long)
    for i, length in enumerate((T, 3, 5)):  # EOS at `length`-1, padding after
        completion_ids[i, length - 1] = tok.eos_token_id
        completion_ids[i, length:] = tok.pad_token_id
        completion_mask[i, length:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_token_logprobs_match_trl_per_token_logps(lora_pair):
    ours_model, trl_model, tok = lora_pair(0.7)
    prompt_ids, prompt_mask, completion_ids, completion_mask = rollout_batch(tok)
    ids, attn = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    T = completion_ids.shape[1]
    with torch.no_grad():
        ours = token_logprobs(ours_model, ids, attn, T, temperature=0.7)
        theirs, _, _ = trl_grpo(trl_model, temperature=0.7)._get_per_token_logps_and_entropies(
            trl_model, ids, attn, T, compute_entropy=True)
    m = completion_mask.bool()
    torch.testing.assert_close(ours[m], theirs[m], atol=1e-4, rtol=1e-5)
    assert torch.equal(theirs[~m], torch.zeros_like(theirs[~m]))  # TRL zeroes padding; we mask afterwards


def test_grpo_end_to_end_loss_and_lora_gradients_match_trl(lora_pair):
    ours_model, trl_model, tok = lora_pair(0.7)
    prompt_ids, prompt_mask, completion_ids, completion_mask = rollout_batch(tok, seed=1)
    ids, attn = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    T = completion_ids.shape[1]
    with torch.no_grad(), reference_model(ours_model):
        ref = token_logprobs(ours_model, ids, attn, T, temperature=0.7)
    advantages = torch.tensor([1.0, -0.5, 0.25])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "ref_per_token_logps": ref,
              "num_items_in_batch": completion_mask.sum().float()}
    for m in (ours_model, trl_model):
        m.zero_grad(set_to_none=True)
    trl_loss = trl_grpo(trl_model, loss_type="dapo", beta=0.04, temperature=0.7)._compute_loss(trl_model, inputs)
    trl_loss.backward()
    logps = token_logprobs(ours_model, ids, attn, T, temperature=0.7)
    loss, _ = grpo_loss(logps, None, ref, advantages, completion_mask, beta=0.04, loss_type="dapo")
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=1e-5, rtol=1e-4)
    theirs = dict(trl_model.named_parameters())
    compared = 0
    for name, p in ours_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-6, rtol=1e-3)
            compared += p.grad.abs().sum() > 0
    assert compared > 0


def test_dpo_end_to_end_with_adapter_off_reference_matches_trl(lora_pair):
    """TRL computes the reference inside _compute_loss by turning the adapter off, as we do."""
    from train_dpo import collate, sequence_logps
    ours_model, trl_model, tok = lora_pair(1.0)  # DPO log-probs are at temperature 1
    pairs = [{"prompt": tok("Q: 2 + 3?", add_special_tokens=False)["input_ids"],
              "chosen": tok(" 5.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
              "rejected": tok(" It is 6, I think.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]},
             {"prompt": tok("Q: how many legs has a cat?", add_special_tokens=False)["input_ids"],
              "chosen": tok(" Four legs.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
              "rejected": tok(" 3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]}]
    ids, attn, completion_mask = collate(pairs, tok.pad_token_id, "cpu")  # (2B, P+T), (2B, T)
    full_completion_mask = torch.cat([torch.zeros_like(attn[:, :-completion_mask.shape[1]]), completion_mask], 1)
    B, beta = len(pairs), 0.1

    trl_model.zero_grad(set_to_none=True)
    trainer = trl_dpo(trl_model, ["sigmoid"], beta, precomputed_ref=False)
    trl_loss = trainer._compute_loss(trl_model, {"input_ids": ids, "attention_mask": attn,
                                                 "completion_mask": full_completion_mask}, return_outputs=False)
    trl_loss.backward()

    ours_model.zero_grad(set_to_none=True)
    logps = sequence_logps(ours_model, ids, attn, completion_mask)
    with torch.no_grad(), reference_model(ours_model):
        ref = sequence_logps(ours_model, ids, attn, completion_mask)
    loss = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta)[0].mean()
    loss.backward()
    assert loss.item() != pytest.approx(0.6931, abs=1e-3)  # adapter non-zero: not the fixed point
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=1e-5, rtol=1e-4)
    logged = trainer._metrics["eval"]["logps/chosen"][0]  # the models are in eval mode (no dropout)
    assert logged == pytest.approx(logps[:B].mean().item(), rel=1e-4)
    theirs = dict(trl_model.named_parameters())
    for name, p in ours_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-6, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Tokenization of a pairs.jsonl row (synthesize.py's conversational format)
# ---------------------------------------------------------------------------------------------
def test_dpo_pair_tokenization_vs_trl(tiny_model_dir, tmp_path):
    """Deliberate difference: TRL's completion = ours + the template's newline after <|im_end|>."""
    import json

    from datasets import Dataset
    from transformers import AutoTokenizer

    import synthesize
    import train_dpo
    from pns_mini.data import offline_problems

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = offline_problems(1)[0]
    wrong = p["solution"].replace(f"\\boxed{{{p['gold']}}}", f"\\boxed{{{int(p['gold']) + 1}}}")
    row = {"id": p["id"], **synthesize.messages(types.SimpleNamespace(pair_format="conversational", enable_thinking=False), tok,
                                                 p["question"], p["solution"], wrong), "gold": p["gold"]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")

    cfg = types.SimpleNamespace(chat_template_for_strings=True, max_length=4096, max_completion_length=None,
                                pairs=str(path))
    ours = train_dpo.tokenize_pairs(train_dpo.read_pairs(str(path)), tok, cfg)[0][0]
    trainer = object.__new__(DPOTrainer)
    trainer._tokenizer = tok
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    theirs = trainer._prepare_dataset(Dataset.from_list([row]), tok, args, "train")[0]

    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert theirs["prompt_ids"] == ours["prompt"]
    assert ours["chosen"][-1] == ours["rejected"][-1] == tok.eos_token_id
    assert theirs["chosen_ids"] == ours["chosen"] + newline
    assert theirs["rejected_ids"] == ours["rejected"] + newline
