"""The losses of PNS as pure tensor functions: group advantages, the k3 KL estimator, the clipped
GRPO surrogate, DPO (sigmoid / IPO / hinge) with the RPO NLL term, and the Bradley-Terry reward
model loss.

Nothing here touches a model, an optimizer or a config: each function maps tensors to tensors,
so the tests in `tests/test_losses.py` are the spec. Option names follow TRL 1.16 (GRPOTrainer,
DPOTrainer, RewardTrainer), and TRL's numbers are the parity oracle (`tests/test_trl_parity.py`)
where a docstring says "as TRL"; where we differ (IPO's length averaging, label_smoothing under
"sigmoid", the RPO term, uneven micro-batches, zero-spread groups) the docstring says how.

Shape letters used below:
    N  number of completions in the (micro-)batch (for GRPO: N = B * G, prompts x generations)
    G  completions per prompt (`num_generations`)
    T  padded completion length (columns of the log-prob / mask tensors)
    B  number of preference pairs (DPO, reward model)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCALE_REWARDS = ("group", "batch", "none")
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")
ADVANTAGE_STD_EPS = 1e-4  # added to the std before dividing (TRL): no NaN on equal rewards


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1.

    Args:
        x: any shape, e.g. (N, T) per-token values.
        mask: same shape as `x`, 1 (or True) for entries that count, 0 for the rest.
        dim: None -> one mean over every selected entry (a 0-dim tensor, token-level);
            an int -> the mean along that dimension (e.g. dim=-1: one mean per sequence).

    Reduction: sum(x * mask) / sum(mask), with the count clamped to at least 1 so an all-zero
    mask gives 0 rather than NaN (TRL's `.clamp(min=1.0)`).
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def _group_std(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Unbiased (Bessel, correction=1) std of each prompt's group: (N,) -> (N/G,).
    TRL: `rewards.view(-1, G).std(dim=1)`."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 for a group std, got {num_generations}")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} rows, "
            f"not a multiple of num_generations={num_generations}"
        )
    return rewards.view(-1, num_generations).std(dim=1)  # (N/G,)


def _zero_spread(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(N,) -> (N/G,) bool: the group's G rewards are all EXACTLY equal. Not `std isclose 0`:
    float32's mean of G equal values can be an ulp off, so their std is ~2e-7, above isclose's
    atol 1e-8 (8 rewards of 3.4745184)."""
    grouped = rewards.view(-1, num_generations)  # (N/G, G)
    return (grouped == grouped[:, :1]).all(dim=1)


# ---------------------------------------------------------------------------------------------
# GRPO: advantages, KL estimator, clipped surrogate
# ---------------------------------------------------------------------------------------------
def zero_std_fraction(rewards: torch.Tensor, num_generations: int) -> float:
    """Share of prompt groups whose G rewards are all equal (zero spread), in [0, 1].

    These groups get advantage 0 and so give no policy gradient (only the KL term moves them):
    log this next to the loss so "the loss is 0" is explained (TRL logs `frac_reward_zero_std`).

    Args:
        rewards: (N,) float, N = B * G, grouped contiguously (rows [kG, (k+1)G) are prompt k's).
        num_generations: G >= 2.

    Zero spread means all G rewards are exactly equal (`_zero_spread`). TRL tests its group std
    with `torch.isclose` (atol 1e-8), so it misses equal groups whose float std is an ulp above
    0; with scale_rewards="batch" it tests the batch std. This is always per group.
    """
    _group_std(rewards, num_generations)  # checks the shapes
    return _zero_spread(rewards, num_generations).float().mean().item()


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    eps: float = ADVANTAGE_STD_EPS,
) -> torch.Tensor:
    """Group-relative advantages of GRPO: each completion's reward minus its prompt group's mean,
    optionally divided by a std (DeepSeekMath, Shao et al. 2024, Sec. 4.1.2 "outcome supervision":
    A_i = (r_i - mean(r)) / std(r); TRL GRPOTrainer `_generate_and_score_completions`).

    Args:
        rewards: (N,) float, one scalar reward per completion, N = B * G, grouped contiguously:
            rows [0, G) are prompt 0's G samples, rows [G, 2G) prompt 1's, ...
        num_generations: G >= 2, completions per prompt.
        scale_rewards: what to divide the centred reward by (TRL's option and values):
            "group"  the group's unbiased std (torch `.std`, correction=1), as DeepSeekMath/TRL;
            "batch"  the unbiased std of all N rewards (the centring is still per group);
            "none"   no division (Dr. GRPO, Liu et al. 2025, drops the std term).
        eps: added to the std before dividing (TRL: 1e-4).

    Returns:
        (N,) advantages, one per completion (every token of a completion shares it).

    A group whose rewards are all equal (`_zero_spread`) gets advantage exactly 0, never NaN: the
    division is by std + eps, and we also zero those rows explicitly, because float rounding in
    the mean leaves r - mean ~ 1e-7, which / (std + eps) leaks up to ~2e-3 (three rewards of 0.9,
    eight of 3.4745184 in float32). TRL keeps that leak; this is our only deviation from its numbers.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    group_std = _group_std(rewards, num_generations)  # (N/G,), also checks the shapes
    grouped = rewards.view(-1, num_generations)  # (N/G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (N/G, G)
    if scale_rewards == "group":
        centred = centred / (group_std.unsqueeze(1) + eps)
    elif scale_rewards == "batch":
        centred = centred / (rewards.std() + eps)
    zero_spread = _zero_spread(rewards, num_generations).unsqueeze(1)  # (N/G, 1)
    advantages = torch.where(zero_spread, torch.zeros_like(centred), centred)  # (N/G, G)
    return advantages.reshape(-1)  # (N,)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) (Schulman 2020, "Approximating KL
    divergence"; DeepSeekMath, Shao et al. 2024, Eq. 4; TRL `per_token_kl`):

        k3 = exp(ref - logp) - (ref - logp) - 1     (>= 0, and = 0 where logp == ref)

    Args:
        logps: (N, T) log pi_theta(o_t | q, o_<t) of the sampled tokens (carries the gradient).
        ref_logps: (N, T) the same under the reference policy (computed without gradient).

    Returns:
        (N, T) per-token values, unmasked and unreduced: the caller selects completion tokens
        with the completion mask and chooses the reduction.
    """
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} differ"
        )
    delta = ref_logps - logps  # (N, T)
    return torch.exp(delta) - delta - 1  # (N, T)


def grpo_normalizer(loss_type: str, completion_mask: torch.Tensor, max_completion_length: int | None = None) -> float:
    """The divisor D of `grpo_loss` for the rows of `completion_mask` (N, T): "grpo" N sequences,
    "dr_grpo" N * L (L = max_completion_length), "dapo" the completion tokens (at least 1, so an
    all-masked batch gives loss 0). Under gradient accumulation: pass the whole optimizer batch's
    mask, then give the result as `normalizer` to every micro-batch."""
    n = completion_mask.size(0)
    if loss_type == "grpo":
        return float(n)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (or a normalizer)")
        return float(n * max_completion_length)
    return max(1.0, float(completion_mask.sum()))  # dapo


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped GRPO surrogate with an optional k3 KL penalty (DeepSeekMath, Shao et al. 2024,
    Eq. 3; clip-higher epsilon_high from DAPO, Yu et al. 2025, Sec. 3.1). Per token (i, t):

        ratio = exp(logp - old_logp)
        l_it  = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * k3_it

    Args:
        logps: (N, T) log-probs of the sampled completion tokens under the current policy
            (carries the gradient).
        old_logps: (N, T) log-probs under the policy that sampled them, or None. None means
            num_iterations == 1 (one update per generation): `logps.detach()` is used, so the ratio
            is exactly 1 and the gradient is the plain policy gradient -A * grad logp (TRL does
            the same).
        ref_logps: (N, T) log-probs under the reference policy, or None (allowed only when
            beta == 0; when given, the KL is still measured and logged).
        advantages: (N,) one advantage per completion (see `group_advantages`).
        completion_mask: (N, T) 1 for completion tokens up to and including the first EOS, 0
            after it (padding). Only these tokens enter the loss and the statistics. A row that is
            all 0 (e.g. a masked truncated completion) contributes 0.
        epsilon: lower clip range, ratio >= 1 - epsilon (TRL `epsilon`, default 0.2).
        epsilon_high: upper clip range, ratio <= 1 + epsilon_high; None -> epsilon (TRL).
        beta: weight of the k3 KL penalty; 0 disables it (TRL's default is 0.0 as well).
        loss_type: how the masked per-token losses are reduced; see the table below.
        max_completion_length: L, the generation budget; needed by "dr_grpo" when no normalizer.
        normalizer: the divisor D below. Leave None for a single (micro-)batch that is the whole
            optimizer batch. Under gradient accumulation, pass the GLOBAL value (`grpo_normalizer`) to every
            micro-batch and simply sum the micro-batch losses (or their gradients): the sum then
            equals the loss of the full batch, whatever the micro-batch sizes or token counts.

    Reduction (m = completion_mask; sums run over this micro-batch's rows and tokens):

        loss_type  summed quantity S                 default D (one batch)  global D (accumulation)
        "grpo"     sum_i (sum_t m_it l_it/sum_t m_it) N (rows here)          N_total sequences
        "dr_grpo"  sum_it m_it l_it                   N * L                  N_total * L
        "dapo"     sum_it m_it l_it                   sum_it m_it (tokens)   all completion tokens

        loss = S / D

    "grpo" is DeepSeekMath's per-sequence mean, then mean over sequences (long completions weigh
    less per token). "dr_grpo" (Liu et al. 2025, "Understanding R1-Zero-Like Training") divides by
    a constant, removing that length bias. "dapo" (Yu et al. 2025, Sec. 3.3 "Token-Level Policy
    Gradient Loss") is the token-level mean over the whole batch; the default here, as in TRL.

    Parity with TRL GRPOTrainer `_compute_loss` (token-level importance sampling, no `delta`):
    TRL divides "grpo" and "dr_grpo" by the micro-batch's N (resp. N * L) and then by the number
    of accumulation steps, which equals our global D when micro-batches have equal N; for "dapo"
    TRL divides by `num_items_in_batch / num_processes`, where num_items_in_batch is the gathered
    completion-token count of the whole generation batch, i.e. our global D on one process.

    Returns:
        loss: 0-dim tensor.
        stats: python floats, token-level masked means over THIS micro-batch:
            "kl" (only when ref_logps is given) mean k3;
            "clip_ratio/low"  share of tokens with ratio < 1 - epsilon and A < 0 (clipped);
            "clip_ratio/high" share with ratio > 1 + epsilon_high and A > 0 (clipped);
            "clip_ratio"      their sum (TRL's `clip_ratio/region_mean`).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    if logps.dim() != 2 or completion_mask.shape != logps.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)} and completion_mask {tuple(completion_mask.shape)} "
            "must both be (N, T)"
        )
    if advantages.shape != (logps.size(0),):
        raise ValueError(
            f"advantages must be (N,) = ({logps.size(0)},), got {tuple(advantages.shape)}"
        )
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps for the KL penalty")

    mask = completion_mask.to(logps.dtype)  # (N, T)
    old_logps = logps.detach() if old_logps is None else old_logps  # ratio 1 when None
    eps_low, eps_high = epsilon, (epsilon if epsilon_high is None else epsilon_high)

    # --- clipped surrogate (per token) ---
    ratio = torch.exp(logps - old_logps)  # (N, T)
    adv = advantages.to(logps.dtype).unsqueeze(1)  # (N, 1), shared by every token of a row
    unclipped = ratio * adv  # (N, T)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv  # (N, T)
    per_token = -torch.min(unclipped, clipped)  # (N, T); pessimistic bound, as PPO
    kl = kl_k3(logps, ref_logps) if ref_logps is not None else None  # (N, T)
    if beta != 0.0:
        per_token = per_token + beta * kl

    # --- reduction: S / D (see the table in the docstring) ---
    if loss_type == "grpo":
        summed = masked_mean(per_token, mask, dim=-1).sum()  # sum of per-sequence means
    else:
        summed = (per_token * mask).sum()  # sum over every completion token
    if loss_type == "dr_grpo" and max_completion_length is not None and logps.size(1) > max_completion_length:
        raise ValueError(f"completions have {logps.size(1)} columns > max_completion_length={max_completion_length}")
    divisor = grpo_normalizer(loss_type, mask, max_completion_length) if normalizer is None else normalizer
    if float(divisor) <= 0:
        raise ValueError(f"the loss normalizer must be > 0, got {float(divisor)}")
    loss = summed / divisor

    # --- statistics (no gradient) ---
    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)  # (N, T) clipped: the ratio cannot fall further
        high = (ratio > 1 + eps_high) & (adv > 0)  # (N, T) clipped: the ratio cannot rise further
        stats = {
            "clip_ratio/low": masked_mean(low.to(mask.dtype), mask).item(),
            "clip_ratio/high": masked_mean(high.to(mask.dtype), mask).item(),
            "clip_ratio": masked_mean((low | high).to(mask.dtype), mask).item(),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl, mask).item()
    return loss, stats


# ---------------------------------------------------------------------------------------------
# DPO and the RPO NLL term
# ---------------------------------------------------------------------------------------------
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses on sequence log-probabilities (TRL 1.16 computes these inside
    DPOTrainer._compute_loss; it has no separate `dpo_loss`).

    With h = (pc - rc) - (pr - rr), the policy's log-ratio margin over the reference's:

        "sigmoid"  -(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h)
                   DPO, Rafailov et al. 2023, Eq. 7 (as TRL at ls = 0); ls > 0 is conservative
                   DPO (Mitchell 2023, "A note on DPO with noisy preferences").
        "ipo"      (h - 1 / (2 * beta))^2
                   IPO, Azar et al. 2023, Eq. 17 (their tau is our beta); TRL length-averages h.
        "hinge"    relu(1 - beta * h)
                   SLiC-HF, Zhao et al. 2023, with margin 1 / beta (as TRL).

    label_smoothing is NOT TRL's: TRL 1.16's "sigmoid" ignores `label_smoothing` altogether
    (dpo_trainer.py: `-F.logsigmoid(self.beta * delta_score)`). TRL uses the option only in
    "robust" (a different, unbiased formula: the smoothed term MINUS the flipped one, divided by
    1 - 2 ls), "exo_pair", and "aot" / "aot_unpaired", which apply the formula above to
    log-ratios sorted over the batch (equal to ours only on pairs already in sorted order). With
    ls > 0 no TRL setting gives these numbers; `tests/test_trl_parity.py` checks that TRL's
    "sigmoid" ignores ls and that its "aot" equals ours on sorted pairs.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) log pi_theta(y | x) of each pair's
            chosen / rejected completion: the SUM of the per-token log-probs over the completion
            tokens (prompt and padding excluded). Carry the gradient.
        ref_chosen_logps, ref_rejected_logps: (B,) the same sums under the reference policy
            (no gradient).
        beta: > 0, the KL-strength / temperature (TRL `beta`; 0.1 is typical for sigmoid).
        loss_type: "sigmoid", "ipo" or "hinge".
        label_smoothing: ls in [0, 0.5), the assumed share of flipped labels; "sigmoid" only.

    IPO note: we feed SUMS for every loss type. TRL's DPOTrainer divides the log-probs by the
    completion length for "ipo" (average log-probs); to reproduce that, pass sum / token count.

    Returns:
        losses: (B,) one loss per pair, unreduced (the caller takes the mean over pairs; under
            gradient accumulation divide by the total number of pairs instead).
        chosen_rewards: (B,) beta * (pc - rc), detached (the implicit reward, for logging).
        rejected_rewards: (B,) beta * (pr - rr), detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}")
    shape = policy_chosen_logps.shape
    for t in (policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        if t.shape != shape or t.dim() != 1:
            raise ValueError("all four log-prob tensors must have the same shape (B,)")

    chosen_logratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    if loss_type == "sigmoid":
        losses = (
            -(1 - label_smoothing) * F.logsigmoid(beta * h)
            - label_smoothing * F.logsigmoid(-beta * h)
        )
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * chosen_logratio.detach()  # (B,)
    rejected_rewards = beta * rejected_logratio.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def rpo_nll_loss(chosen_logps_sum: torch.Tensor, chosen_token_counts: torch.Tensor) -> torch.Tensor:
    """The NLL term of RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization",
    the L_NLL term of their DPO+NLL loss): the chosen completion's negative log-likelihood
    divided by its length, averaged over pairs. The script adds `rpo_alpha * rpo_nll_loss(...)`
    to the mean DPO loss, which keeps the chosen log-prob from falling while the margin grows.
    (The paper puts its weight alpha on the DPO term instead; we weight the NLL term. The two
    coincide at alpha = 1.) TRL 1.16 has no `rpo_alpha` (older TRL had one); its nearest
    equivalent is `loss_type=["sigmoid", "sft"], loss_weights=[1.0, alpha]`, whose "sft" term
    reduces differently (see Returns).

    Args:
        chosen_logps_sum: (B,) sum of the policy's per-token log-probs over each chosen
            completion's tokens (the same sums that `dpo_loss` takes).
        chosen_token_counts: (B,) number of completion tokens in each chosen completion (>= 1).

    Returns:
        0-dim tensor: mean over pairs of -(chosen_logps_sum / chosen_token_counts), a per-sequence
        length normalisation as in the paper. (TRL's "sft" term instead takes one token-level
        mean of -log p over all chosen tokens of the batch: sum over tokens / total chosen
        tokens; the two agree only when all chosen completions have the same length.)
    """
    if chosen_logps_sum.shape != chosen_token_counts.shape or chosen_logps_sum.dim() != 1:
        raise ValueError("chosen_logps_sum and chosen_token_counts must both be (B,)")
    if (chosen_token_counts < 1).any():
        raise ValueError("every chosen completion needs at least one token")
    return (-chosen_logps_sum / chosen_token_counts.to(chosen_logps_sum.dtype)).mean()


# ---------------------------------------------------------------------------------------------
# Reward model (Bradley-Terry)
# ---------------------------------------------------------------------------------------------
def reward_model_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry pairwise loss with a centring penalty (the PNS paper's reward model loss,
    arXiv 2602.03516; centring as in Eisenstein et al. 2023, "Helping or Herding?", and TRL
    RewardTrainer `center_rewards_coefficient`):

        L = mean over pairs of [ -log sigmoid(r_c - r_r) + center_coef * (r_c + r_r)^2 ]

    which equals TRL's `-logsigmoid(r_c - r_r).mean() + coef * mean((r_c + r_r)^2)`. The first
    term only sees the margin; the second pulls the scores' mean toward 0 so they stay on a
    comparable scale across prompts.

    Args:
        chosen_scores: (B,) scalar score of each pair's chosen (correct) completion.
        rejected_scores: (B,) scalar score of the rejected completion of the same pair.
        center_coef: >= 0, weight of the centring term (TRL suggests 0.01; 0 disables it).

    Returns:
        loss: 0-dim tensor (mean over the B pairs; under gradient accumulation rescale by
            B / total pairs).
        stats: python floats over this batch: "accuracy" share of pairs with r_c > r_r (ties
            count as wrong), "score_mean" mean of all 2B scores, "margin_mean" mean r_c - r_r.
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(
            f"chosen_scores {tuple(chosen_scores.shape)} and rejected_scores "
            f"{tuple(rejected_scores.shape)} must both be (B,)"
        )
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    margin = chosen_scores - rejected_scores  # (B,)
    per_pair = -F.logsigmoid(margin) + center_coef * (chosen_scores + rejected_scores) ** 2  # (B,)
    loss = per_pair.mean()
    with torch.no_grad():
        stats = {
            "accuracy": (margin > 0).float().mean().item(),
            "score_mean": torch.cat([chosen_scores, rejected_scores]).mean().item(),
            "margin_mean": margin.mean().item(),
        }
    return loss, stats
