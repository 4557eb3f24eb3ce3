"""The pure loss functions against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from facexpr import losses


def test_wgan_signs() -> None:
    real = torch.tensor([2.0, 4.0])
    fake = torch.tensor([-1.0, 1.0])
    assert losses.wgan_critic_loss(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert losses.wgan_generator_loss(fake).item() == pytest.approx(0.0)
    assert losses.wgan_generator_loss(torch.tensor([3.0])).item() == pytest.approx(-3.0)


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_gradient_penalty_of_linear_critic(scale: float) -> None:
    """D(x) = <w, x> has gradient w everywhere, so the penalty is (|w| - 1)^2 exactly."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=g)
    w = w / w.norm() * scale

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1)

    real = torch.randn(5, 3, 4, 4, generator=g)
    fake = torch.randn(5, 3, 4, 4, generator=g)
    gp = losses.gradient_penalty(critic, real, fake, alpha=torch.rand(5, 1, 1, 1, generator=g))
    assert gp.item() == pytest.approx((scale - 1) ** 2, abs=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic() -> None:
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    real, fake = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    gp = losses.gradient_penalty(conv, real, fake)
    gp.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    total, w, p = losses.wgan_gp_critic_loss(conv, real, fake, lambda_gp=10.0)
    assert total.item() == pytest.approx(w.item() + 10 * p.item(), rel=1e-5)


def test_au_cycle_l1() -> None:
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    b = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert losses.au_regression_loss(a, b).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert losses.cycle_loss(a, b).item() == pytest.approx((1 + 0 + 0 + 2) / 4)
    assert losses.l1(a, b).item() == pytest.approx(0.75)


def test_attention_loss_mean_and_tv() -> None:
    const = torch.full((2, 1, 4, 4), 0.25)
    # constant mask: no TV, only the mean term
    assert losses.attention_loss(const, 0.1, 1.0).item() == pytest.approx(0.025)
    # one vertical edge of height 1 between columns 1 and 2: 4 squared differences of 1
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0
    assert losses.attention_loss(edge, 0.0, 1.0).item() == pytest.approx(4.0)
    # averaged over the batch: the weight does not depend on the batch size
    assert losses.attention_loss(edge.repeat(5, 1, 1, 1), 0.0, 1.0).item() == pytest.approx(4.0)
    # defaults are the paper's: 0.1 mean, 1e-5 TV
    assert losses.attention_loss(edge).item() == pytest.approx(0.1 * 0.5 + 1e-5 * 4.0)


def test_tv_loss() -> None:
    assert losses.tv_loss(torch.ones(2, 2, 5, 5)).item() == 0.0
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 2, 5, 5)
    assert losses.tv_loss(ramp).item() == pytest.approx(1.0)  # |dw| = 1 everywhere, dh = 0


def test_losses_are_float32_under_bf16_inputs() -> None:
    a = torch.rand(2, 3, 4, 4, dtype=torch.bfloat16)
    assert losses.cycle_loss(a, a * 0).dtype == torch.float32
    assert losses.attention_loss(a[:, :1]).dtype == torch.float32
