"""Loss functions of the expression-synthesis GANs, as small pure functions.

Each takes tensors (or, for the gradient penalty, a callable critic) and returns a scalar tensor;
none holds state, reads globals or chooses a device. Weights (lambdas) are applied by the
training recipes, not here, except where a paper defines one loss as a weighted sum of two terms
(:func:`attention_loss`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "wgan_critic_loss",
    "wgan_gp_critic_loss",
    "gradient_penalty",
    "wgan_generator_loss",
    "au_regression_loss",
    "cycle_loss",
    "l1",
    "attention_loss",
    "tv_loss",
]


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Wasserstein critic loss ``E[D(fake)] - E[D(real)]`` (the critic minimises it)."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """Wasserstein generator loss ``-E[D(fake)]``."""
    return -fake_scores.float().mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    alpha: Tensor | None = None,
) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x)||_2 - 1)^2]`` on random interpolates of real and fake
    (Gulrajani et al. 2017).

    ``critic`` maps images to scores (any shape per image; they are summed, which gives the
    gradient of each image's total score). ``alpha`` (B,1,1,1) in [0,1] may be given so callers
    control randomness (the training loop derives it from a per-step generator, which keeps
    resumed runs bit-identical); by default it is drawn from torch's global generator.
    The penalty is computed in float32 because second-order gradients are fragile in bf16.
    """
    real = real.detach().float()
    fake = fake.detach().float()
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    alpha = alpha.to(device=real.device, dtype=real.dtype)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        scores = critic(x).float()
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean()


def wgan_gp_critic_loss(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    lambda_gp: float = 10.0,
    alpha: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Full WGAN-GP critic objective; returns ``(total, wasserstein_part, penalty)``.

    Convenience for callers that do not need the critic's other heads; recipes that also use the
    critic's AU head call :func:`wgan_critic_loss` and :func:`gradient_penalty` separately.
    """
    w = wgan_critic_loss(critic(real), critic(fake.detach()))
    gp = gradient_penalty(critic, real, fake, alpha)
    return w + lambda_gp * gp, w, gp


def au_regression_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and target AU conditions (both ``aus / 5``)."""
    return F.mse_loss(predicted.float(), target.float())


def cycle_loss(reconstruction: Tensor, source: Tensor) -> Tensor:
    """L1 between the twice-translated image and its source (identity preservation)."""
    return F.l1_loss(reconstruction.float(), source.float())


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference; a named alias so recipes read like the papers."""
    return F.l1_loss(a.float(), b.float())


def total_variation(x: Tensor, squared: bool = False) -> Tensor:
    """Per-sample sum of neighbour differences over H and W, shape (B,).

    ``squared`` selects GANimation's form (squared differences); otherwise absolute (L1) TV.
    """
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    if squared:
        return dh.float().pow(2).flatten(1).sum(1) + dw.float().pow(2).flatten(1).sum(1)
    return dh.float().abs().flatten(1).sum(1) + dw.float().abs().flatten(1).sum(1)


def attention_loss(attention: Tensor, lambda_mean: float = 0.1, lambda_tv: float = 1e-5) -> Tensor:
    """GANimation's attention regulariser ``lambda_tv * TV(A) + lambda_mean * E[A]``.

    With ``A = 1`` meaning "keep the source pixel", a generator can trivially satisfy the cycle
    loss by saturating A to 1 everywhere and doing nothing; the mean term pushes A down so the
    colour image is used, and the TV term (squared differences, summed over pixels as in the
    paper, hence the tiny weight) keeps the mask smooth. Averaged over the batch, so the weights
    do not depend on the batch size.
    """
    a = attention.float()
    return lambda_mean * a.mean() + lambda_tv * total_variation(a, squared=True).mean()


def tv_loss(x: Tensor) -> Tensor:
    """Generic L1 total variation, averaged per element: smoothness prior for flow fields and
    masks whose weight should not depend on the image size."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).float().abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).float().abs().mean()
    return dh + dw


def _check_embeddings(*embeddings: Tensor) -> None:
    shape = embeddings[0].shape
    if embeddings[0].ndim < 1 or any(e.shape != shape for e in embeddings):
        raise ValueError(f"embeddings must share one shape (..., D); got {[tuple(e.shape) for e in embeddings]}")


def identity_loss(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Mean Euclidean distance between paired identity embeddings (..., D).

    Euclidean (not 1 - cosine) because that is the metric dlib's descriptor was trained for and
    that evaluation reports (:func:`facexpr.face.identity.identity_distance`; < 0.6 = same
    person), so the loss reads on the same scale. Differentiable everywhere; at a zero distance
    torch's norm gives a zero (sub)gradient, not NaN.
    """
    _check_embeddings(emb_a, emb_b)
    return torch.linalg.vector_norm(emb_a.float() - emb_b.float(), dim=-1).mean()


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float,
                 squared: bool = False) -> Tensor:
    """FaceNet's triplet hinge ``mean(relu(d(a, p) - d(a, n) + margin))`` over (..., D) embeddings.

    ``d`` is the Euclidean distance by default (``squared=False``), the scale of dlib's
    descriptor (its own metric loss uses margin 0.04 around the 0.6 threshold); ``squared=True``
    uses squared distances as in Schroff et al. 2015 (margin 0.2 on unit-normalised embeddings
    there). The loss is 0 once every negative is farther from its anchor than the positive by at
    least ``margin``.
    """
    _check_embeddings(anchor, positive, negative)
    a = anchor.float()
    d_pos = torch.linalg.vector_norm(a - positive.float(), dim=-1)
    d_neg = torch.linalg.vector_norm(a - negative.float(), dim=-1)
    if squared:
        d_pos, d_neg = d_pos.square(), d_neg.square()
    return F.relu(d_pos - d_neg + margin).mean()
