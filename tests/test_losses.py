"""What `pns_mini.losses` must compute, as hand-checked numbers and invariances (CPU, < 1 s).

- group_advantages: hand values for rewards [1,0,0,1 | 2,2,2,2] with G=4 under "group",
  "batch" and "none" scaling; equal rewards give exactly 0 (never NaN); bad shapes are errors.
- kl_k3: 0 when logp == ref, >= 0 everywhere, exp(1) - 2 at a log-ratio of 1.
- grpo_loss: equal rewards give zero policy gradient; at ratio 1 (old_logps None) with beta 0
  the gradient is the plain policy gradient -A * grad logp / D; clipping stops the gradient only
  for the sign of advantage it should; each loss_type's divisor D on a hand example; summing
  micro-batch losses with the GLOBAL normalizer gives the full-batch gradient (all loss types).
- dpo_loss: ln 2 when policy == reference; hand values for sigmoid, label smoothing, ipo,
  hinge; one SGD step raises the margin. rpo_nll_loss by hand.
- reward_model_loss: hand values and stats; the centring term's gradient pulls scores to 0.
"""
import math

import pytest
import torch

from pns_mini.losses import (
    dpo_loss,
    group_advantages,
    grpo_loss,
    grpo_normalizer,
    kl_k3,
    masked_mean,
    reward_model_loss,
    rpo_nll_loss,
    zero_std_fraction,
)

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # 2 prompts x G=4


# ---------------------------------------------------------------------------------------------
# group_advantages
# ---------------------------------------------------------------------------------------------
def test_group_advantages_group_scaling_by_hand():
    # group 0: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = sqrt(1/3); group 1: all equal
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4), expected)
    assert zero_std_fraction(REWARDS, 4) == 0.5


def test_group_advantages_batch_and_none_scaling_by_hand():
    # batch: still centred per group, divided by the std of all 8 rewards:
    # mean 1.25, squared deviations sum 5.5, unbiased var 5.5 / 7
    a = 0.5 / (math.sqrt(5.5 / 7) + 1e-4)
    torch.testing.assert_close(
        group_advantages(REWARDS, 4, scale_rewards="batch"),
        torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]),
    )
    torch.testing.assert_close(
        group_advantages(REWARDS, 4, scale_rewards="none"),
        torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]),
    )


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value, G", [(0.9, 3), (3.4745184, 8)])
def test_equal_rewards_give_exactly_zero_advantage(scale, value, G):
    # 0.9 is not exact in float32: its mean over 3 rounds 6e-8 off, and 6e-8 / (std + 1e-4)
    # would leak an advantage of ~6e-4 without group_advantages' explicit zeroing; eight equal
    # rewards of 3.4745184 have a float32 std of ~2e-7, which `std isclose 0` calls a spread
    rewards = torch.full((G,), value)  # one group (how float32 sums a row depends on the tensor's size)
    adv = group_advantages(rewards, G, scale_rewards=scale)
    assert torch.equal(adv, torch.zeros(G))
    assert zero_std_fraction(rewards, G) == 1.0


@pytest.mark.parametrize(
    "n, g, scale", [(7, 4, "group"), (4, 1, "group"), (8, 4, "std"), (8, 4, "GROUP")]
)
def test_group_advantages_rejects_bad_arguments(n, g, scale):
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(n), g, scale_rewards=scale)


# ---------------------------------------------------------------------------------------------
# kl_k3 and masked_mean
# ---------------------------------------------------------------------------------------------
def test_kl_k3_zero_at_reference_nonnegative_and_by_hand():
    logps = torch.randn(3, 5)
    assert torch.equal(kl_k3(logps, logps), torch.zeros(3, 5))
    assert (kl_k3(torch.randn(50, 7), torch.randn(50, 7)) >= 0).all()
    # ref - logp = 1: e^1 - 1 - 1
    torch.testing.assert_close(kl_k3(torch.tensor([[-2.0]]), torch.tensor([[-1.0]])),
                               torch.tensor([[math.e - 2]]))


def test_masked_mean_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx((1 + 2 + 4) / 3)
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 4.0]))
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0  # empty mask: 0, not NaN


# ---------------------------------------------------------------------------------------------
# grpo_loss
# ---------------------------------------------------------------------------------------------
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 2 completions: 3 and 2 tokens (EOS included)


def test_equal_rewards_give_zero_policy_gradient():
    logps = torch.randn(4, 3, requires_grad=True)
    adv = group_advantages(torch.ones(4), 4)
    for loss_type in ["grpo", "dr_grpo", "dapo"]:
        loss, _ = grpo_loss(logps, None, None, adv, torch.ones(4, 3), loss_type=loss_type,
                            max_completion_length=3)
        (grad,) = torch.autograd.grad(loss, logps)
        assert torch.equal(grad, torch.zeros(4, 3))
        assert loss.item() == 0.0


def test_ratio_one_gives_plain_policy_gradient_on_logps():
    # d loss / d logp_it = -A_i * m_it / D with old_logps None (ratio 1) and beta 0
    logps = torch.randn(2, 4, requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = MASK.float()
    cases = {
        "dapo": mask / 5,  # 5 completion tokens in the batch
        "dr_grpo": mask / (2 * 4),  # N * max_completion_length
        "grpo": mask / mask.sum(-1, keepdim=True) / 2,  # per-sequence mean, then over N = 2
    }
    for loss_type, weight in cases.items():
        loss, _ = grpo_loss(logps, None, None, adv, MASK, loss_type=loss_type,
                            max_completion_length=4)
        (grad,) = torch.autograd.grad(loss, logps)
        torch.testing.assert_close(grad, -adv.unsqueeze(1) * weight)
        # the value at ratio 1 is -sum(A * weight): same weights as the gradient
        assert loss.item() == pytest.approx(-(adv.unsqueeze(1) * weight).sum().item())


def test_ratio_one_gives_plain_policy_gradient_on_a_toy_policy():
    # a softmax policy over 5 tokens; the reference gradient is -sum_it A_i m_it grad logp_it / D
    torch.manual_seed(0)
    theta = torch.randn(2, 4, 5, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 4))
    adv = torch.tensor([1.5, -0.5])

    def token_logps():
        return torch.log_softmax(theta, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (2, 4)

    loss, _ = grpo_loss(token_logps(), None, None, adv, MASK, loss_type="dapo")
    (grad,) = torch.autograd.grad(loss, theta)
    pg_objective = (adv.unsqueeze(1) * token_logps() * MASK).sum() / MASK.sum()
    (pg_grad,) = torch.autograd.grad(-pg_objective, theta)
    torch.testing.assert_close(grad, pg_grad)


def test_clipping_stops_the_gradient_only_for_the_matching_advantage_sign():
    # one token per row; old_logps chosen so the ratio is 1.5 (above 1.2) or 0.5 (below 0.8)
    logps = torch.zeros(4, 1, requires_grad=True)
    old = -torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = grpo_loss(logps, old, None, adv, torch.ones(4, 1), loss_type="dapo")
    (grad,) = torch.autograd.grad(loss, logps)
    # d/dlogp of -ratio * A / 4 is -ratio * A / 4 where unclipped
    expected = torch.tensor([[0.0], [1.5 / 4], [0.0], [-0.5 / 4]])
    torch.testing.assert_close(grad, expected)
    assert stats["clip_ratio/high"] == 0.25 and stats["clip_ratio/low"] == 0.25
    assert stats["clip_ratio"] == 0.5
    # clip-higher: with epsilon_high = 0.6, ratio 1.5 is inside the range again
    loss, stats = grpo_loss(logps, old, None, adv, torch.ones(4, 1), epsilon_high=0.6)
    (grad,) = torch.autograd.grad(loss, logps)
    assert grad[0, 0].item() == pytest.approx(-1.5 / 4)
    assert stats["clip_ratio/high"] == 0.0


def test_each_loss_type_divisor_by_hand():
    # per-token losses at ratio 1, beta 0: -A on each token. A = [1, 3], lengths 3 and 2.
    logps = torch.zeros(2, 4)
    adv = torch.tensor([1.0, 3.0])
    # grpo: (mean(-1,-1,-1) + mean(-3,-3)) / 2 = (-1 - 3) / 2
    # dr_grpo: (-3 - 6) / (2 * 4);  dapo: (-3 - 6) / 5 tokens
    expected = {"grpo": -2.0, "dr_grpo": -9 / 8, "dapo": -9 / 5}
    for loss_type, value in expected.items():
        loss, _ = grpo_loss(logps, None, None, adv, MASK, loss_type=loss_type,
                            max_completion_length=4)
        assert loss.item() == pytest.approx(value)
    # an explicit normalizer replaces the divisor (TRL's num_items_in_batch for dapo)
    loss, _ = grpo_loss(logps, None, None, adv, MASK, normalizer=10)
    assert loss.item() == pytest.approx(-0.9)
    loss, _ = grpo_loss(logps, None, None, adv, MASK, normalizer=torch.tensor(10))
    assert loss.item() == pytest.approx(-0.9)


def test_kl_penalty_adds_beta_k3_and_is_logged():
    logps = torch.zeros(1, 2)
    ref = torch.tensor([[1.0, 0.0]])  # k3 = [e - 2, 0]
    loss, stats = grpo_loss(logps, None, ref, torch.zeros(1), torch.ones(1, 2), beta=0.5)
    assert loss.item() == pytest.approx(0.5 * (math.e - 2) / 2)
    assert stats["kl"] == pytest.approx((math.e - 2) / 2)


def test_grpo_loss_rejects_bad_arguments():
    logps, adv = torch.zeros(2, 4), torch.zeros(2)
    with pytest.raises(ValueError):
        grpo_loss(logps, None, None, adv, MASK, beta=0.1)  # KL without a reference
    with pytest.raises(ValueError):
        grpo_loss(logps, None, None, adv, MASK, loss_type="dr_grpo")  # no max_completion_length
    with pytest.raises(ValueError):
        grpo_loss(logps, None, None, adv, MASK, loss_type="bnpo")


def test_grpo_normalizer_by_hand():
    # MASK: 2 completions of 3 and 2 tokens; budget L = 4
    assert grpo_normalizer("grpo", MASK) == 2.0  # sequences
    assert grpo_normalizer("dr_grpo", MASK, max_completion_length=4) == 8.0  # sequences x L
    assert grpo_normalizer("dapo", MASK) == 5.0  # completion tokens
    assert grpo_normalizer("dapo", torch.zeros_like(MASK)) == 1.0  # all masked out: loss 0, not 0 / 0
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_normalizer("dr_grpo", MASK)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("num_micro", [2, 4])
def test_micro_batches_with_global_normalizer_give_the_full_batch_gradient(loss_type, num_micro):
    torch.manual_seed(0)
    n, t, d, v, max_len = 8, 6, 4, 7, 6
    w = torch.randn(d, v, requires_grad=True)  # the shared "model": logits = x @ w
    x = torch.randn(n, t, d)
    tokens = torch.randint(0, v, (n, t))
    lengths = torch.tensor([1, 6, 3, 2, 5, 4, 6, 2])  # uneven, so token counts differ per micro
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).int()  # (8, 6)
    adv = group_advantages(torch.randn(n), 4)

    def logps_of(rows):
        logits = x[rows] @ w  # (n_micro, t, v)
        return torch.log_softmax(logits, -1).gather(-1, tokens[rows].unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():  # old policy a little off, so some tokens clip; a separate reference
        old = logps_of(slice(None)) + 0.3 * torch.randn(n, t)
        ref = logps_of(slice(None)) + 0.3 * torch.randn(n, t)
    kwargs = dict(beta=0.1, loss_type=loss_type, max_completion_length=max_len)

    full, _ = grpo_loss(logps_of(slice(None)), old, ref, adv, mask, **kwargs)
    (full_grad,) = torch.autograd.grad(full, w)

    global_normalizer = {"grpo": n, "dr_grpo": n * max_len, "dapo": mask.sum()}[loss_type]
    size = n // num_micro
    total = 0.0
    for k in range(num_micro):
        rows = slice(k * size, (k + 1) * size)
        loss, _ = grpo_loss(logps_of(rows), old[rows], ref[rows], adv[rows], mask[rows],
                            normalizer=global_normalizer, **kwargs)
        loss.backward()  # accumulates into w.grad, as in the training loop
        total += loss.item()
    torch.testing.assert_close(w.grad, full_grad)
    assert total == pytest.approx(full.item(), rel=1e-5)


def test_dapo_with_local_normalizers_is_not_the_full_batch_loss():
    # why the global normalizer exists: micro-batches with different token counts, averaged
    logps = torch.zeros(2, 4)
    adv = torch.tensor([1.0, 3.0])
    full, _ = grpo_loss(logps, None, None, adv, MASK)  # -9 / 5
    halves = [grpo_loss(logps[i:i + 1], None, None, adv[i:i + 1], MASK[i:i + 1])[0] for i in (0, 1)]
    assert full.item() == pytest.approx(-1.8)
    assert (sum(halves) / 2).item() == pytest.approx(-2.0)  # (-1 + -3) / 2: a per-sequence mean


# ---------------------------------------------------------------------------------------------
# dpo_loss and rpo_nll_loss
# ---------------------------------------------------------------------------------------------
# pc - rc = -10 - (-11) = 1, pr - rr = -12 - (-11) = -1, so h = 2
PC, PR, RC, RR = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_sigmoid_is_ln2_when_policy_equals_reference(label_smoothing):
    logps_c, logps_r = torch.tensor([-5.0, -40.0]), torch.tensor([-7.0, -3.0])
    losses, rc, rr = dpo_loss(logps_c, logps_r, logps_c, logps_r, beta=0.1,
                              label_smoothing=label_smoothing)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
    assert torch.equal(rc, torch.zeros(2)) and torch.equal(rr, torch.zeros(2))


def test_dpo_losses_by_hand():
    beta = 0.1  # beta * h = 0.2
    losses, chosen_r, rejected_r = dpo_loss(PC, PR, RC, RR, beta)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.2)))  # -log sigmoid(0.2)
    assert chosen_r.item() == pytest.approx(0.1) and rejected_r.item() == pytest.approx(-0.1)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.9 * math.log(1 + math.exp(-0.2))
                                          + 0.1 * math.log(1 + math.exp(0.2)))
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta, loss_type="ipo")
    assert losses.item() == pytest.approx((2 - 1 / 0.2) ** 2)  # (2 - 5)^2 = 9
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta, loss_type="hinge")
    assert losses.item() == pytest.approx(0.8)  # relu(1 - 0.2)
    losses, _, _ = dpo_loss(PC, PR, RC, RR, 1.0, loss_type="hinge")
    assert losses.item() == 0.0  # beta * h = 2 >= 1: past the margin, no loss


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_one_dpo_step_raises_the_margin(loss_type):
    pc = torch.tensor([-10.0, -20.0], requires_grad=True)
    pr = torch.tensor([-10.0, -18.0], requires_grad=True)
    rc, rr = torch.tensor([-10.0, -20.0]), torch.tensor([-10.0, -18.0])

    def margin():
        return ((pc - rc) - (pr - rr)).detach()

    before = margin()
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type)
    losses.mean().backward()
    with torch.no_grad():
        pc -= 0.5 * pc.grad
        pr -= 0.5 * pr.grad
    assert (margin() > before).all()


def test_dpo_rejects_bad_arguments():
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="kto")


def test_rpo_nll_by_hand():
    # pairs: -6 over 3 tokens -> 2 nats/token; -2 over 4 tokens -> 0.5; mean 1.25
    loss = rpo_nll_loss(torch.tensor([-6.0, -2.0]), torch.tensor([3, 4]))
    assert loss.item() == pytest.approx(1.25)
    with pytest.raises(ValueError):
        rpo_nll_loss(torch.tensor([-1.0]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------
# reward_model_loss
# ---------------------------------------------------------------------------------------------
def test_reward_model_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    loss, stats = reward_model_loss(chosen, rejected, center_coef=0.01)
    pair1 = math.log(1 + math.exp(-2)) + 0.01 * 2**2  # -log sigmoid(2) + 0.01 * (2 + 0)^2
    pair2 = math.log(2)  # a tie: -log sigmoid(0), centring 0
    assert loss.item() == pytest.approx((pair1 + pair2) / 2)
    assert stats == pytest.approx({"accuracy": 0.5, "score_mean": 0.5, "margin_mean": 1.0})
    loss, _ = reward_model_loss(chosen, rejected, center_coef=0.0)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)


def test_reward_centring_pulls_the_mean_score_to_zero():
    # a shared offset b moves every score; the Bradley-Terry term cannot see it
    b = torch.tensor(5.0, requires_grad=True)
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([0.0, -0.5])
    loss, _ = reward_model_loss(chosen + b, rejected + b, center_coef=0.0)
    (grad,) = torch.autograd.grad(loss, b)
    assert grad.item() == 0.0
    loss, stats = reward_model_loss(chosen + b, rejected + b, center_coef=0.01)
    (grad,) = torch.autograd.grad(loss, b)
    # d/db mean(0.01 * (c + r + 2b)^2) = 0.01 * 2 * 2 * mean(c + r + 2b) = 0.04 * 10.5
    assert grad.item() == pytest.approx(0.04 * 10.5)
    assert stats["score_mean"] == pytest.approx(5.25)  # a descent step lowers b toward 0
