"""Training recipes of ``stargan`` (Choi et al. 2018) and ``stargan-depth`` (seed 003).

``stargan``: WGAN-GP critic with a classification head; per step 5 critic updates (adversarial +
gradient penalty + cross-entropy of the *source* label on real images) and one generator update
(adversarial + cross-entropy of the *target* label on the translation + L1 reconstruction of the
input from the translation given the source label). The paper's defaults: Adam 1e-4, betas
(0.5, 0.999), gp 10, cls 1, rec 10, no EMA (the generator is exported as trained).

``stargan-depth`` adds seed 003's depth adversarial network:

* ``Gd``: an RGB -> depth (or surface-normal) network, initialised from the shipped
  ``depthnet-v1`` (pretrained with pixel L1 on depth maps rendered from the MediaPipe mesh,
  :mod:`facexpr.training.depth_pretrain`; no perceptual term: no offline VGG19 exists);
* ``Dd``: a depth critic with an adversarial and a classification head. Real depth maps are
  the rendered mesh depth of the real faces (eq. 5); its classifier learns the source labels on
  them with seed 003's confidence penalty (eq. 11): ``CE - beta * H(p)``, which rewards a less
  confident (higher-entropy) depth classifier, as for classifiers trained on noisy labels;
* ``Gr``: the depth -> RGB translation ``G'_depth`` of eq. 7, for the depth cycle
  ``|I_t - Gr(Gd(I_t))|_1``;
* the generator's loss adds ``lambda_depth * (adv_d + lambda_cls * cls_d) + lambda_depth_rec *
  rec_d`` on ``Gd(G(x, c_t))`` (eqs. 5-8); these gradients flow through ``Gd`` into ``G``.
  ``lambda_depth`` is the "depth network weight" of seed 003's Table 3 (0.3 chosen there).
  ``Gd`` and ``Gr`` are trained with ``G`` (min over {G_rgb, G_depth}) unless
  ``train_depth=false``.
* ``geometry=normals`` is the surface-normal variant (3-channel maps instead of depth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr import losses
from facexpr.data.dataset import PreparedDataset
from facexpr.errors import ConfigError, DatasetError
from facexpr.models.layers import (
    ResidualBlock,
    conv_decoder,
    conv_encoder,
    init_weights,
)
from facexpr.training import reporting
from facexpr.training.data import (
    LabelledImages,
    label_index,
    resize_rgb,
    to_tensor_image,
)
from facexpr.training.identity import IdentityLossOptions, identity_term
from facexpr.training.recipe import (
    Batch,
    Metrics,
    Phase,
    Recipe,
    StepContext,
    adam,
)
from facexpr.training.recipe_base import gp_alpha

# -- StarGAN --------------------------------------------------------------------------------------


@dataclass
class StarGANTrainConfig(IdentityLossOptions):
    """The StarGAN paper's options (Choi et al. 2018, section 4 and its reference code); plus
    ``id_weight`` (0 = off), the identity term of :mod:`facexpr.training.identity`."""

    critic_steps: int = 5
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0


@dataclass
class LabelSamples:
    images: Tensor
    labels: Tensor
    depth: Tensor | None = None


class StarGANRecipe(Recipe):
    families = ("stargan",)
    Config = StarGANTrainConfig
    exports = {"generator": "G"}
    cfg: StarGANTrainConfig

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model_config.label_names

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("G", "G", every=self.cfg.critic_steps))

    # -- data --------------------------------------------------------------------------------
    def training_rows(self, prepared: PreparedDataset, rows: np.ndarray) -> np.ndarray:
        index = label_index(prepared, self.labels)
        kept = rows[index[rows] >= 0]
        present = set(index[kept].tolist())
        if len(present) < 2:
            raise DatasetError(f"{self.family} needs faces labelled with at least two of {', '.join(self.labels)}; "
                               f"the training split has {len(kept)} labelled face(s)")
        return kept

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        return LabelledImages(prepared, rows, self.labels, size, seed, flip)

    # -- losses ------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        if phase == "D":
            return self.critic_step(batch, gp_alpha(ctx.seed, ctx.iteration, ctx.batch, ctx.rank, ctx.world_size))
        return self.generator_step(batch)

    def critic_step(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, Metrics]:
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        with torch.no_grad():
            fake = G(batch.image, batch.target).result
        real_scores, real_logits = D(batch.image)
        fake_scores, _ = D(fake)
        w = losses.wgan_critic_loss(real_scores, fake_scores)
        cls = F.cross_entropy(real_logits.float(), batch.label.argmax(1))
        gp = losses.gradient_penalty(lambda x: D(x)[0], batch.image, fake, alpha)
        total = w + c.lambda_cls * cls + c.lambda_gp * gp
        acc = (real_logits.argmax(1) == batch.label.argmax(1)).float().mean()
        return total, {"d/total": total.detach(), "d/wasserstein": (-w).detach(), "d/cls": cls.detach(),
                       "d/cls_acc_real": acc, "d/gp": gp.detach()}

    def translate(self, batch: Batch) -> tuple[Tensor, Tensor, Metrics]:
        """The StarGAN generator terms; returns (total, translation, metrics)."""
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        fake = G(batch.image, batch.target).result
        scores, logits = D(fake)
        adv = losses.wgan_generator_loss(scores)
        cls = F.cross_entropy(logits.float(), batch.target.argmax(1))
        rec = losses.cycle_loss(G(fake, batch.label).result, batch.image)
        metrics: Metrics = {"g/adv": adv.detach(), "g/cls": cls.detach(), "g/rec_l1": rec.detach()}
        total = adv + c.lambda_cls * cls + c.lambda_rec * rec + identity_term(c.id_weight, fake, batch.image, metrics)
        return total, fake, metrics

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        total, _, metrics = self.translate(batch)
        return total, {"g/total": total.detach(), **metrics}

    # -- validation --------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int,
                   device: torch.device) -> LabelSamples:
        index = label_index(prepared, self.labels)
        labelled = [int(r) for r in rows if index[int(r)] >= 0] or [int(r) for r in rows]
        idx = labelled[: max(2, n)]
        images = torch.stack([to_tensor_image(resize_rgb(prepared.image(i), size)) for i in idx]).to(device)
        labels = torch.eye(len(self.labels))[np.maximum(index[idx], 0)].to(device)
        return LabelSamples(images, labels)

    @torch.no_grad()
    def report(self, samples: LabelSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Grid: rows = faces, columns = source then every label. Validation: the critic's
        accuracy on the translations' target labels, and the reconstruction L1."""
        G, D = self.nets["G"], self.nets["D"]
        n, b = len(self.labels), samples.images.shape[0]
        columns, hits = [samples.images], []
        rec = []
        with autocast():
            for k in range(n):
                target = torch.zeros(b, n, device=samples.images.device)
                target[:, k] = 1
                out = G(samples.images, target).result.float()
                columns.append(out)
                hits.append((D(out)[1].argmax(1) == k).float().mean())
                rec.append((G(out, samples.labels).result.float() - samples.images).abs().mean())
        grid = reporting.labelled_grid(columns, ["source", *self.labels])
        return grid, {"cls_acc_fake": float(torch.stack(hits).mean()), "rec_l1": float(torch.stack(rec).mean())}


# -- StarGAN with depth guidance (seed 003) ------------------------------------------------------------


@dataclass
class StarGANDepthTrainConfig(StarGANTrainConfig):
    """StarGAN's options plus seed 003's depth network (see the module docstring)."""

    geometry: str = "depth"  # "depth" or "normals" (the surface-normal variant)
    lambda_depth: float = 0.3  # weight of the depth adversarial + classification loss on G (Table 3)
    lambda_depth_rec: float = 1.0  # eq. 7: |I_t - Gr(Gd(I_t))|_1
    beta: float = 0.1  # confidence penalty of eq. 11 on the depth classifier (0 = off)
    lr_depth: float = 1e-5  # learning rate of Gd and Gr when train_depth
    train_depth: bool = True
    depth_model: str = ""  # a depth-net folder; "" = the shipped depthnet-v1

    def problems(self) -> list[str]:
        out = super().problems()
        if self.geometry not in ("depth", "normals"):
            out.append(f"geometry must be depth or normals, got {self.geometry!r}")
        if self.beta < 0:
            out.append("beta must be >= 0")
        return out


def confidence_penalised_ce(logits: Tensor, target: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Seed 003's eq. 11 (Pereyra et al. 2017): ``CE(logits, target) - beta * H(softmax)``.

    Returns the loss and the mean entropy (nats). Minimising it keeps the classifier correct
    while rewarding less confident predictions, which helps when the labels (here: the depth
    maps behind them) are noisy.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    entropy = -(logp.exp() * logp).sum(1).mean()
    return F.nll_loss(logp, target) - beta * entropy, entropy


class DepthToRGB(nn.Module):
    """``G'_depth`` of eq. 7: depth (or normal) maps -> RGB, a small encoder-decoder."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.encoder, ch = conv_encoder(in_channels, width, 2)
        self.mid = ResidualBlock(ch)
        self.decoder, ch = conv_decoder(ch, 2, "nearest")
        self.head = nn.Sequential(nn.Conv2d(ch, 3, 7, 1, 3), nn.Tanh())
        init_weights(self)

    def forward(self, maps: Tensor) -> Tensor:
        return self.head(self.decoder(self.mid(self.encoder(maps))))


class StarGANDepthRecipe(StarGANRecipe):
    families = ("stargan-depth",)
    Config = StarGANDepthTrainConfig
    cfg: StarGANDepthTrainConfig

    @property
    def channels(self) -> int:
        return 1 if self.cfg.geometry == "depth" else 3

    def networks(self) -> dict[str, nn.Module]:
        from facexpr.models.depthnet import DepthNet, DepthNetConfig, load_depthnet
        from facexpr.models.stargan import build_critic

        nets = super().networks()
        if self.model_config.image_size % 16:
            raise ValueError(f"stargan-depth needs an image size divisible by 16, got {self.model_config.image_size}")
        normals = self.cfg.geometry == "normals"
        if torch.empty(0).device.type == "meta":  # validation of the config: no weights are read
            Gd = DepthNet(DepthNetConfig(image_size=self.model_config.image_size, normals=normals))
        else:
            Gd = load_depthnet(self.cfg.depth_model or None)
            if normals and not Gd.config.normals:
                raise ConfigError("geometry=normals needs a depth network trained with normals "
                                  "(its config.json says normals: false)")
        nets["Gd"] = Gd
        nets["Dd"] = build_critic(self.model_config, in_channels=self.channels)
        nets["Gr"] = DepthToRGB(self.channels)
        return nets

    def optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        betas = (c.beta1, c.beta2)
        g_groups: list[dict[str, Any]] = [{"params": list(nets["G"].parameters()), "lr": c.lr_g}]
        if c.train_depth:
            g_groups.append({"params": [*nets["Gd"].parameters(), *nets["Gr"].parameters()], "lr": c.lr_depth})
        else:
            g_groups.append({"params": list(nets["Gr"].parameters()), "lr": c.lr_depth})
            nets["Gd"].requires_grad_(False)
        return {"G": torch.optim.Adam(g_groups, betas=betas),
                "D": adam(nets["D"].parameters(), c.lr_d, betas),
                "Dd": adam(nets["Dd"].parameters(), c.lr_d, betas)}

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("Dd", "Dd"), Phase("G", "G", every=self.cfg.critic_steps))

    def geometry_of(self, image: Tensor) -> Tensor:
        out = self.nets["Gd"].predict(image)
        return out["depth"] if self.cfg.geometry == "depth" else out["normals"]

    def real_geometry(self, batch: Batch) -> Tensor:
        return batch.depth if self.cfg.geometry == "depth" else batch.normals

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        from facexpr.data.landmarks import dataset_landmarks

        return LabelledImages(prepared, rows, self.labels, size, seed, flip, landmarks=dataset_landmarks(prepared))

    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        if phase == "Dd":
            return self.depth_critic_step(batch, gp_alpha(ctx.seed + 1, ctx.iteration, ctx.batch, ctx.rank,
                                                          ctx.world_size))
        return super().loss(phase, batch, ctx)

    def depth_critic_step(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, Metrics]:
        """Eqs. 5 and 11: real (rendered) depth vs. the depth of G's translations, and the depth
        classifier on real depth with the confidence penalty."""
        Dd, c = self.nets["Dd"], self.cfg
        with torch.no_grad():
            fake = self.geometry_of(self.nets["G"](batch.image, batch.target).result)
        real = self.real_geometry(batch)
        real_scores, logits = Dd(real)
        fake_scores, _ = Dd(fake)
        w = losses.wgan_critic_loss(real_scores, fake_scores)
        cls, entropy = confidence_penalised_ce(logits, batch.label.argmax(1), c.beta)
        gp = losses.gradient_penalty(lambda x: Dd(x)[0], real, fake, alpha)
        total = w + c.lambda_cls * cls + c.lambda_gp * gp
        return total, {"dd/total": total.detach(), "dd/wasserstein": (-w).detach(), "dd/cls": cls.detach(),
                       "dd/entropy": entropy.detach(), "dd/gp": gp.detach()}

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """StarGAN's terms plus eqs. 5-8 on the depth of the translation, through ``Gd``."""
        c = self.cfg
        total, fake, metrics = self.translate(batch)
        geo = self.geometry_of(fake)
        scores, logits = self.nets["Dd"](geo)
        adv_d = losses.wgan_generator_loss(scores)
        cls_d = F.cross_entropy(logits.float(), batch.target.argmax(1))
        rec_d = losses.cycle_loss(self.nets["Gr"](geo), fake)
        total = total + c.lambda_depth * (adv_d + c.lambda_cls * cls_d) + c.lambda_depth_rec * rec_d
        return total, {"g/total": total.detach(), **metrics, "g/depth_adv": adv_d.detach(),
                       "g/depth_cls": cls_d.detach(), "g/depth_rec_l1": rec_d.detach()}

    @torch.no_grad()
    def report(self, samples: LabelSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """StarGAN's grid with a second band: the depth network's view of every translation."""
        grid, val = super().report(samples, autocast)
        n, b = len(self.labels), samples.images.shape[0]
        cols = [self.geometry_of(samples.images)]
        acc = []
        with autocast():
            for k in range(n):
                target = torch.zeros(b, n, device=samples.images.device)
                target[:, k] = 1
                geo = self.geometry_of(self.nets["G"](samples.images, target).result.float())
                cols.append(geo)
                acc.append((self.nets["Dd"](geo)[1].argmax(1) == k).float().mean())
        cols = [(g * 2 - 1).expand(-1, 3, -1, -1) if g.shape[1] == 1 else g for g in cols]
        depth_grid = reporting.labelled_grid(cols, [f"{self.cfg.geometry} of source", *self.labels])
        val["depth_cls_acc_fake"] = float(torch.stack(acc).mean())
        return np.concatenate([grid, depth_grid], axis=0), val
