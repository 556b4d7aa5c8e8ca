import math

import pytest
import torch

from vineppo.losses import kl_estimate, kl_loss_terms, ppo_policy_loss, whiten


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))


def exact_expected_grad(estimator, logits, ref_logits, old_logits):
    """E_{x ~ pi_old}[grad of the loss term at x], computed exactly by enumerating a categorical."""
    logits = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    old = torch.log_softmax(old_logits, -1)
    ref = torch.log_softmax(ref_logits, -1)
    term, _ = kl_loss_terms(logp, old, ref, estimator)
    (old.exp() * term).sum().backward()
    return logits.grad


def true_kl_grad(logits, ref_logits):
    logits = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(ref_logits, -1)
    (logp.exp() * (logp - ref)).sum().backward()
    return logits.grad


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_loss_gradient_is_unbiased_on_policy(estimator):
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    got = exact_expected_grad(estimator, logits, ref_logits, old_logits=logits.detach())
    assert torch.allclose(got, true_kl_grad(logits, ref_logits), atol=1e-10)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_ratio_corrected_kl_gradient_is_unbiased_off_policy(estimator):
    torch.manual_seed(1)
    logits, ref_logits, old = (torch.randn(5, dtype=torch.float64) for _ in range(3))
    got = exact_expected_grad(estimator, logits, ref_logits, old_logits=old)
    assert torch.allclose(got, true_kl_grad(logits, ref_logits), atol=1e-10)


def test_k1_without_the_ratio_would_have_zero_expected_gradient():
    # the reason for the correction: the plain k1 value has E[grad] = 0 on-policy
    torch.manual_seed(2)
    logits = torch.randn(5, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(torch.randn(5, dtype=torch.float64), -1)
    (logp.detach().exp() * kl_estimate(logp, ref, "k1")).sum().backward()
    assert torch.allclose(logits.grad, torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_ppo_clipped_surrogate_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 1.1]]))  # ratios 1.5, 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, -2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    out = ppo_policy_loss(logp, old, logp.clone(), adv, mask / 4, clip_range=0.2, kl_coef=0.0)
    # per token: max(-1.5, -1.2) = -1.2 (clipped); max(1.5, 1.2) = 1.5; max(1.0, 1.6) = 1.6 (clipped); -3.3
    assert out.loss.item() == pytest.approx((-1.2 + 1.5 + 1.6 - 3.3) / 4)
    assert out.clip_fraction.item() == pytest.approx(2 / 4)
    assert out.kl.item() == pytest.approx(0.0)


def test_ppo_loss_gradient_vanishes_where_clipped_and_respects_mask():
    logp = torch.log(torch.tensor([[1.5, 1.0, 1.0]])).requires_grad_(True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = ppo_policy_loss(logp, old, old, adv, mask / 2, clip_range=0.2, kl_coef=0.0)
    out.loss.backward()
    # token 0 is clipped (no gradient), token 1: d(-A*rho)/dlogp = -A*rho/2 = -1, token 2 is masked
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.0, 0.0])


def test_kl_term_enters_with_its_coefficient():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    mask = torch.ones(1, 2)
    base = ppo_policy_loss(logp, logp, ref, torch.zeros(1, 2), mask / 2, 0.2, kl_coef=0.0).loss
    with_kl = ppo_policy_loss(logp, logp, ref, torch.zeros(1, 2), mask / 2, 0.2, kl_coef=0.1).loss
    expected_kl = kl_estimate(logp, ref, "k3").sum() / 2
    assert (with_kl - base).item() == pytest.approx(0.1 * expected_kl.item())


def test_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = whiten(values, mask)
    assert out[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert out[3].item() == 0.0
    assert whiten(torch.full((4,), 0.7), torch.ones(4)).tolist() == [0.0] * 4
