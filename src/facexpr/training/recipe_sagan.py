"""Training recipe of ``sagan``: seed 002's class-conditional self-attention GAN as an editor.

**Seed 002's losses** (``loss=ce``, the default). The seed writes

    L_D = -E[CE(X)] - E[CE(D(G(X)))],   L_G = -E[CE(y, D(G(X)))]

and explains them as: "we use the discriminator to predict a multinomial distribution of class
labels, and penalize the discriminator for incorrect guesses, and the generator for causing
incorrect guesses by the discriminator"; "the discriminator was then trained to identify correct
classes from both real data and data that was generated". The second term of ``L_D`` carries no
label ``y``, so the correct class of a generated image is a fixed one: the critic has ``K + 1``
outputs, the ``K`` expressions and "generated" (the semi-supervised GAN critic of Salimans et al.
2016). Read as losses to minimise (the printed minus signs would make the critic maximise its
own error, contradicting the prose), with ``x`` a real face of class ``y`` and ``c`` the
randomly drawn target class::

    L_D = CE(y, D(x)) + CE(K, D(G(x, c)))     # real faces: their class; translations: "generated"
    L_G = CE(c, D(G(x, c)))                   # the critic must see the target class

:func:`ce_critic_loss` and :func:`ce_generator_loss` are these, as pure functions (softmax over
all ``K + 1`` outputs, means over the batch).

**Wasserstein variant** (``loss=wgan``, the seed's other run): the extra output is a realism
score; WGAN-GP (Gulrajani et al. 2017) on it plus StarGAN's classification terms on the ``K``
logits (real faces' class for the critic, the target class for the generator).

**Reconstruction.** The seed's generator has no term that ties the output to the input face, and
the seed reports mode collapse. An editor must keep the person, so the generator also pays
``lambda_rec * |G(G(x, c), y) - x|_1`` (StarGAN's reconstruction, weight 10);
``--set lambda_rec=0`` gives the seed's losses alone.

Optimiser: SAGAN's two-timescale Adam (G 1e-4, D 4e-4, betas (0, 0.9)) with one critic update per
generator update; the seed states none of these. No EMA (SAGAN has none): ``G`` is exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr import losses
from facexpr.data.dataset import PreparedDataset
from facexpr.models.sagan import SAGANConfig, SAGANCritic, SAGANGenerator, SelfAttention
from facexpr.training import reporting
from facexpr.training.recipe import Batch, Metrics, Phase, Recipe, RecipeConfig, StepContext, adam
from facexpr.training.recipe_base import gp_alpha
from facexpr.training.recipe_stargan import LabelledImages, LabelSamples, StarGANRecipe

LOSSES = ("ce", "wgan")


# -- seed 002's softmax cross-entropy losses ----------------------------------------------------------


def ce_critic_loss(real_logits: Tensor, real_labels: Tensor, fake_logits: Tensor) -> Tensor:
    """``CE(y, D(x)) + CE(K, D(G(x, c)))``: the critic names the class of real faces and calls
    translations "generated" (the last of its ``K + 1`` outputs).

    ``real_logits``, ``fake_logits``: (B, K+1); ``real_labels``: (B,) class indices in ``0..K-1``.
    """
    generated = fake_logits.shape[1] - 1
    fake_labels = torch.full((fake_logits.shape[0],), generated, dtype=torch.long, device=fake_logits.device)
    return F.cross_entropy(real_logits.float(), real_labels) + F.cross_entropy(fake_logits.float(), fake_labels)


def ce_generator_loss(fake_logits: Tensor, target_labels: Tensor) -> Tensor:
    """``CE(c, D(G(x, c)))``: the generator pays when the critic does not see the target class
    (including when it sees "generated"). ``fake_logits``: (B, K+1); ``target_labels``: (B,)."""
    return F.cross_entropy(fake_logits.float(), target_labels)


# -- the recipe ---------------------------------------------------------------------------------


@dataclass
class SAGANTrainConfig(RecipeConfig):
    """Options; see the module docstring for where each default comes from."""

    loss: str = "ce"  # "ce" (seed 002's softmax cross-entropy) or "wgan" (WGAN-GP + class head)
    critic_steps: int = 1
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    lambda_rec: float = 10.0  # 0 = the seed's losses alone
    lambda_gp: float = 10.0  # wgan only
    lambda_cls: float = 1.0  # wgan only: weight of the class terms

    def problems(self) -> list[str]:
        out = super().problems()
        if self.loss not in LOSSES:
            out.append(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        return out


class SAGANRecipe(Recipe):
    families = ("sagan",)
    Config = SAGANTrainConfig
    exports = {"generator": "G"}
    cfg: SAGANTrainConfig
    model_config: SAGANConfig

    # the label data and its checks are StarGAN's (one-hot source label + a random other target)
    training_rows = StarGANRecipe.training_rows
    sample_set = StarGANRecipe.sample_set

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model_config.label_names

    def networks(self) -> dict[str, nn.Module]:
        return {"G": SAGANGenerator(self.model_config), "D": SAGANCritic(self.model_config)}

    def optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        betas = (self.cfg.beta1, self.cfg.beta2)
        return {"G": adam(nets["G"].parameters(), self.cfg.lr_g, betas),
                "D": adam(nets["D"].parameters(), self.cfg.lr_d, betas)}

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("G", "G", every=self.cfg.critic_steps))

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        return LabelledImages(prepared, rows, self.labels, size, seed, flip)

    # -- losses ------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        if phase == "D":
            return self.critic_step(batch, ctx)
        return self.generator_step(batch)

    def critic_step(self, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        k = len(self.labels)
        label = batch.label.argmax(1)
        with torch.no_grad():
            fake = G(batch.image, batch.target).result
        real_out, fake_out = D(batch.image), D(fake)
        acc = (real_out[:, :k].argmax(1) == label).float().mean()
        if c.loss == "ce":
            total = ce_critic_loss(real_out, label, fake_out)
            caught = (fake_out.argmax(1) == k).float().mean()
            return total, {"d/total": total.detach(), "d/cls_acc_real": acc, "d/fake_caught": caught}
        w = losses.wgan_critic_loss(real_out[:, k], fake_out[:, k])
        cls = F.cross_entropy(real_out[:, :k].float(), label)
        alpha = gp_alpha(ctx.seed, ctx.iteration, ctx.batch, ctx.rank, ctx.world_size)
        gp = losses.gradient_penalty(lambda x: D(x)[:, k], batch.image, fake, alpha)
        total = w + c.lambda_gp * gp + c.lambda_cls * cls
        return total, {"d/total": total.detach(), "d/wasserstein": (-w).detach(), "d/gp": gp.detach(),
                       "d/cls": cls.detach(), "d/cls_acc_real": acc}

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        k = len(self.labels)
        target = batch.target.argmax(1)
        fake = G(batch.image, batch.target).result
        out = D(fake)
        if c.loss == "ce":
            adv = ce_generator_loss(out, target)
            metrics = {"g/ce": adv.detach()}
        else:
            adv = losses.wgan_generator_loss(out[:, k]) + c.lambda_cls * F.cross_entropy(out[:, :k].float(), target)
            metrics = {"g/adv": adv.detach()}
        total = adv
        if c.lambda_rec > 0:
            rec = losses.cycle_loss(G(fake, batch.label).result, batch.image)
            total = total + c.lambda_rec * rec
            metrics["g/rec_l1"] = rec.detach()
        hit = (out[:, :k].argmax(1) == target).float().mean()
        return total, {"g/total": total.detach(), **metrics, "g/target_seen": hit}

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def report(self, samples: LabelSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Grid: rows = faces, columns = source then every label. Validation: how often the
        critic's class logits name the target of a translation, how often the ``ce`` critic
        calls translations "generated", the reconstruction L1 and the attention gates.

        Both networks run in eval mode here: in training mode every forward advances the
        spectral norms' power iterations, so looking at samples would change the training."""
        G, D = self.nets["G"], self.nets["D"]
        n, b = len(self.labels), samples.images.shape[0]
        columns, hits, caught, rec = [samples.images], [], [], []
        with evaluating(G, D), autocast():
            for k in range(n):
                target = torch.zeros(b, n, device=samples.images.device)
                target[:, k] = 1
                out = G(samples.images, target).result.float()
                columns.append(out)
                logits = D(out).float()
                hits.append((logits[:, :n].argmax(1) == k).float().mean())
                caught.append((logits.argmax(1) == n).float().mean())
                rec.append((G(out, samples.labels).result.float() - samples.images).abs().mean())
        grid = reporting.labelled_grid(columns, ["source", *self.labels])
        val = {"cls_acc_fake": float(torch.stack(hits).mean()), "rec_l1": float(torch.stack(rec).mean())}
        if self.cfg.loss == "ce":
            val["fake_caught"] = float(torch.stack(caught).mean())
        for i, gamma in enumerate(m.gamma for m in G.modules() if isinstance(m, SelfAttention)):
            val[f"gamma_g{i}"] = float(gamma.detach().abs().max())
        return grid, val


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for ``modules`` inside the block, each back in its own mode afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
