import math

import pytest
import torch

from vineppo.losses import (
    KLPenalty, MiniBatchTotals, kl_estimate, kl_loss_terms, ppo_policy_loss, token_weights, whiten,
)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))


def exact_expected_grad(estimator, logits, ref_logits, old_logits, gradient="ratio_corrected"):
    """E_{x ~ pi_old}[grad of the loss term at x], computed exactly by enumerating a categorical."""
    logits = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    old = torch.log_softmax(old_logits, -1)
    ref = torch.log_softmax(ref_logits, -1)
    term, _ = kl_loss_terms(logp, old, ref, KLPenalty(1.0, estimator, gradient))
    (old.exp() * term).sum().backward()
    return logits.grad


def true_kl_grad(logits, ref_logits, reverse=False):
    """grad of KL(pi || pi_ref), or with `reverse` of KL(pi_ref || pi), with respect to pi's logits."""
    logits = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(ref_logits, -1)
    kl = (ref.exp() * (ref - logp)).sum() if reverse else (logp.exp() * (logp - ref)).sum()
    kl.backward()
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
    out = ppo_policy_loss(logp, old, logp.clone(), adv, mask / 4, clip_range=0.2, kl=KLPenalty(0.0))
    # per token: max(-1.5, -1.2) = -1.2 (clipped); max(1.5, 1.2) = 1.5; max(1.0, 1.6) = 1.6 (clipped); -3.3
    assert out.loss.item() == pytest.approx((-1.2 + 1.5 + 1.6 - 3.3) / 4)
    assert out.clip_fraction.item() == pytest.approx(2 / 4)
    assert out.kl.item() == pytest.approx(0.0)


def test_ppo_loss_gradient_vanishes_where_clipped_and_respects_mask():
    logp = torch.log(torch.tensor([[1.5, 1.0, 1.0]])).requires_grad_(True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = ppo_policy_loss(logp, old, old, adv, mask / 2, clip_range=0.2, kl=KLPenalty(0.0))
    out.loss.backward()
    # token 0 is clipped (no gradient), token 1: d(-A*rho)/dlogp = -A*rho/2 = -1, token 2 is masked
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.0, 0.0])


def test_kl_term_enters_with_its_coefficient():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    mask = torch.ones(1, 2)
    base = ppo_policy_loss(logp, logp, ref, torch.zeros(1, 2), mask / 2, 0.2, KLPenalty(0.0)).loss
    with_kl = ppo_policy_loss(logp, logp, ref, torch.zeros(1, 2), mask / 2, 0.2, KLPenalty(0.1)).loss
    expected_kl = kl_estimate(logp, ref, "k3").sum() / 2
    assert (with_kl - base).item() == pytest.approx(0.1 * expected_kl.item())


def test_whiten():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = whiten(values, mask)
    assert out[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert out[3].item() == 0.0
    assert whiten(torch.full((4,), 0.7), torch.ones(4)).tolist() == [0.0] * 4


def test_plain_k3_has_the_gradient_of_the_reverse_kl():
    """The official code's KL term, the k3 value in the loss: its expected gradient on-policy is that of
    KL(pi_ref || pi), not of KL(pi || pi_ref) (which the ratio-corrected term estimates)."""
    torch.manual_seed(3)
    logits, ref_logits = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    got = exact_expected_grad("k3", logits, ref_logits, old_logits=logits.detach(), gradient="plain")
    assert torch.allclose(got, true_kl_grad(logits, ref_logits, reverse=True), atol=1e-10)
    assert not torch.allclose(got, true_kl_grad(logits, ref_logits), atol=1e-3)


def test_the_kl_clip_bounds_the_penalty_and_stops_its_gradient():
    logp = torch.log(torch.tensor([[0.9, 0.5]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[1e-6, 0.25]]))  # k3 of the first token is about 12.8, the second 0.19
    term, kl = kl_loss_terms(logp, logp.detach(), ref, KLPenalty(1.0, "k3", "plain", clip=10.0))
    assert term[0, 0].item() == 10.0 and kl[0, 0].item() > 12
    assert term[0, 1].item() == pytest.approx(kl[0, 1].item())
    term.sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() != 0.0


def test_sequence_sum_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    totals = MiniBatchTotals(tokens=4.0, sequences=2.0)
    assert token_weights(mask, "sequence_sum", totals).tolist() == [[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]]


def official_loss(logp, old, ref, adv, mask, clip_range, kl_coef):
    """The official PPOTrainer._compute_actor_loss (PAPER-NOTES 3.5), written out independently: the token-level
    masked mean of the PPO-clip loss, plus kl_coef x the mean over sequences of the per-sequence sum of the k3
    "control_variate" estimate exp(ref - logp) - (ref - logp) - 1, clamped to [0, 10] after masking."""
    ratio = torch.exp((logp - old) * mask)
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    pg_loss = (pg * mask).sum() / mask.sum()
    log_ratio = ref - logp
    ref_kl = torch.clamp((torch.exp(log_ratio) - log_ratio - 1) * mask, min=0, max=10)
    return pg_loss + kl_coef * ref_kl.sum(dim=1).mean()


def test_the_paper_configs_reproduce_the_official_loss_on_a_fixed_batch():
    """configs/paper/common.yaml's algo keys through vineppo's loss equal the official formula, value and
    gradient, to 1e-6 (one micro-batch = the mini-batch, as in the official runs' training steps)."""
    from pathlib import Path

    from vineppo.config import load_config

    paper = Path(__file__).parents[1] / "configs" / "paper"
    algo = load_config(paper / "common.yaml", []).algo
    torch.manual_seed(4)
    mask = torch.tensor([[1.0] * 7 + [0.0] * 2, [1.0] * 9, [1.0] * 3 + [0.0] * 6])
    logits = torch.randn(3, 9, 5, dtype=torch.float64)
    tokens = torch.randint(0, 5, (3, 9))
    old = torch.log_softmax(logits + 0.1 * torch.randn_like(logits), -1).gather(-1, tokens[..., None])[..., 0]
    ref = torch.log_softmax(logits + 3.0 * torch.randn_like(logits), -1).gather(-1, tokens[..., None])[..., 0]
    adv = torch.randn(3, 9, dtype=torch.float64)
    results = []
    for loss_of in ("ours", "official"):
        leaf = logits.clone().requires_grad_(True)
        logp = torch.log_softmax(leaf, -1).gather(-1, tokens[..., None])[..., 0]
        if loss_of == "ours":
            totals = MiniBatchTotals(tokens=mask.sum().item(), sequences=3.0)
            penalty = KLPenalty(algo.kl_coef, algo.kl_estimator, algo.kl_gradient, algo.kl_clip)
            loss = ppo_policy_loss(
                logp, old, ref, adv, token_weights(mask, algo.loss_aggregation, totals), algo.clip_range, penalty,
                token_weights(mask, algo.kl_aggregation, totals),
            ).loss
        else:
            loss = official_loss(logp, old, ref, adv, mask, clip_range=0.2, kl_coef=1e-4)
        loss.backward()
        results.append((loss.item(), leaf.grad))
    (ours, our_grad), (official, official_grad) = results
    assert ours == pytest.approx(official, abs=1e-6)
    assert torch.allclose(our_grad, official_grad, atol=1e-6)
    assert ref_kl_clipped_somewhere(logp.detach(), ref, mask)  # the clip is exercised


def ref_kl_clipped_somewhere(logp, ref, mask) -> bool:
    return bool(((torch.exp(ref - logp) - (ref - logp) - 1) * mask > 10).any())
