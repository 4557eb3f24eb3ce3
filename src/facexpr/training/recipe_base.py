"""What every WGAN-GP + AU-regression recipe shares (GANimation, its AdaIN variant, DFT-Net).

They train their critics identically (Wasserstein loss, gradient penalty, AU regression on real
images), keep an EMA of G, run ``critic_steps`` critic updates per generator update, learn from
:class:`~facexpr.training.data.ExpressionPairs` batches (image, its AUs, a target AU vector) and
show the same sample grid; only their generator phases differ. Kept in its own module so the
family recipes can import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr import losses
from facexpr.data.dataset import PreparedDataset
from facexpr.expression import emotion_aus
from facexpr.models import au_condition
from facexpr.training import reporting
from facexpr.training.data import ExpressionPairs, resize_rgb, to_tensor_image
from facexpr.training.identity import IdentityLossOptions, identity_term
from facexpr.training.recipe import (
    Batch,
    Metrics,
    Phase,
    Recipe,
    StepContext,
)

__all__ = ["AUSamples", "Batch", "Metrics", "WGANAUConfig", "WGANAURecipe", "gp_alpha", "identity_term"]


@dataclass
class WGANAUConfig(IdentityLossOptions):
    """Defaults are the GANimation paper's (Pumarola et al. 2018 and its reference code): Adam
    1e-4 with betas (0.5, 0.999), one generator step per 5 critic steps, gradient penalty 10,
    AU-regression weight 4000 (divided by the batch size, as the reference code does, on
    condition vectors ``aus / 5``), cycle 10, attention mean 0.1 and TV 1e-5. ``id_weight``
    (from :class:`~facexpr.training.identity.IdentityLossOptions`, 0 = off) adds the distance of
    dlib's descriptors between output and input to the generator loss."""

    critic_steps: int = 5  # critic steps per generator step
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_gp: float = 10.0
    lambda_cond: float = 4000.0  # AU regression, generator side
    lambda_cond_critic: float = 4000.0  # AU regression on real images, critic side
    lambda_cycle: float = 10.0
    lambda_attention_mean: float = 0.1
    lambda_attention_tv: float = 1e-5
    ema_beta: float = 0.999  # with a (1+s)/(10+s) warm-up so short runs have a useful EMA
    target_noise: float = 0.1  # uniform +- noise on sampled target AUs (0..5 scale)

    def problems(self) -> list[str]:
        return super().problems() + (["target_noise must be >= 0"] if self.target_noise < 0 else [])


def gp_alpha(seed: int, iteration: int, batch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """Interpolation weights of the gradient penalty, a pure function of the step.

    Drawn for the whole global batch and sliced like the sampler slices the data (rank r holds
    global slots r, r + world, ...), so an N-rank run computes what one process would, and a
    resumed run draws what the uninterrupted one did.
    """
    g = torch.Generator().manual_seed((seed * (1 << 32) + iteration) % (1 << 63))
    return torch.rand(batch, 1, 1, 1, generator=g)[rank::world_size]


@dataclass
class AUSamples:
    images: Tensor
    aus: Tensor
    targets: list[tuple[str, Tensor]]


class WGANAURecipe(Recipe):
    """Critic phase, schedule, data and samples of the AU-conditioned WGAN-GP families.

    The AU-regression terms are ``lambda / batch * MSE(aus/5)`` on both sides, reproducing the
    reference GANimation implementation (which divides the mean squared error by the batch size,
    so its weight 4000 is effectively 160 at batch 25). ``batch`` is the configured global batch,
    a constant of the run, so the weighting does not change with the number of ranks.
    """

    Config = WGANAUConfig
    ema = {"G_ema": "G"}
    exports = {"generator": "G_ema"}
    cfg: WGANAUConfig

    #: model family -> sample-grid renderer ``(G, images, [(name, aus)], autocast) -> uint8``
    render_grid: Callable[..., np.ndarray] = staticmethod(reporting.render_grid)

    def __init__(self, family: str, model_config: Any, config: WGANAUConfig, ctx: StepContext) -> None:
        super().__init__(family, model_config, config, ctx)
        self.au_weight_g = config.lambda_cond / ctx.batch
        self.au_weight_d = config.lambda_cond_critic / ctx.batch

    # -- declarations ------------------------------------------------------------------------
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("G", "G", every=self.cfg.critic_steps, ema=("G_ema",)))

    @property
    def G(self) -> nn.Module:
        return self.nets["G"]

    @property
    def D(self) -> nn.Module:
        return self.nets["D"]

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        if phase == "D":
            return self.critic_step(batch, gp_alpha(ctx.seed, ctx.iteration, ctx.batch, ctx.rank, ctx.world_size))
        return self.generator_step(batch)

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------
    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        return ExpressionPairs(prepared, rows, size, seed, flip, self.cfg.target_noise)

    # -- losses ------------------------------------------------------------------------------
    def _patch_scores(self, image: Tensor) -> Tensor:
        return self.D(image)[0]

    def critic_step(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, Metrics]:
        """Critic loss on real images vs. G's current translations (G is not updated)."""
        cond_real = au_condition(batch.aus)
        cond_target = au_condition(batch.target_aus)
        with torch.no_grad():
            fake = self.G(batch.image, cond_target).result
        real_scores, real_aus = self.D(batch.image)
        fake_scores, _ = self.D(fake)
        w = losses.wgan_critic_loss(real_scores, fake_scores)
        au = losses.au_regression_loss(real_aus, cond_real)
        gp = losses.gradient_penalty(self._patch_scores, batch.image, fake, alpha)
        total = w + self.au_weight_d * au + self.cfg.lambda_gp * gp
        return total, {
            "d/total": total.detach(),
            "d/wasserstein": (-w).detach(),  # estimate of the W distance: larger = easier to tell apart
            "d/au_mse": au.detach(),
            "d/gp": gp.detach(),
        }

    def translate_and_cycle(self, batch: Batch) -> tuple[Any, Any, Tensor, Tensor, Tensor]:
        """The generator-phase terms every family shares.

        Returns ``(out, back, adv, au, cycle)``: the translation to the target AUs, its
        translation back to the source AUs, the Wasserstein generator loss, the AU-regression
        loss on the translation and the L1 cycle loss against the input.
        """
        out = self.G(batch.image, au_condition(batch.target_aus))
        fake_scores, fake_aus = self.D(out.result)
        adv = losses.wgan_generator_loss(fake_scores)
        au = losses.au_regression_loss(fake_aus, au_condition(batch.target_aus))
        back = self.G(out.result, au_condition(batch.aus))
        cyc = losses.cycle_loss(back.result, batch.image)
        return out, back, adv, au, cyc

    # -- validation --------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int,
                   device: torch.device) -> AUSamples:
        """Fixed faces and fixed targets: three emotion prototypes applied to each face, and the
        real AUs of the next face."""
        idx = [int(i) for i in rows[: max(2, n)]]
        images = torch.stack([to_tensor_image(resize_rgb(prepared.image(i), size)) for i in idx]).to(device)
        aus_np = prepared.aus[idx].astype(np.float32)
        targets = [
            (name, torch.from_numpy(np.stack([emotion_aus(name, 1.0, a) for a in aus_np])).to(device))
            for name in ("happy", "surprised", "angry")
        ]
        targets.append(("next face's AUs", torch.from_numpy(np.roll(aus_np, -1, axis=0)).to(device)))
        return AUSamples(images, torch.from_numpy(aus_np).to(device), targets)

    @torch.no_grad()
    def report(self, samples: AUSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """The sample grid, and validation numbers on the same faces with the EMA generator:
        AU error of the edits as judged by the critic's AU head (0..5 scale), cycle L1, mean A."""
        G = self.nets["G_ema"]
        grid = type(self).render_grid(G, samples.images, samples.targets, autocast)
        target = samples.targets[-1][1]
        with autocast():
            out = G(samples.images, au_condition(target))
            back = G(out.result, au_condition(samples.aus))
            _, pred = self.D(out.result)
        return grid, {
            "au_mae": float((pred.float() * 5 - target).abs().mean()),
            "cycle_l1": float((back.result.float() - samples.images).abs().mean()),
            "attention_mean": float(out.attention.float().mean()),
        }
