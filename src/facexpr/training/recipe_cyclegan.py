"""Training recipe of ``cyclegan`` (Zhu et al. 2017; seed 002 trains it on happy <-> neutral).

Networks: ``G_AB`` (a -> b), ``G_BA`` (b -> a), ``D_A`` (real a vs ``G_BA(b)``), ``D_B`` (real b
vs ``G_AB(a)``), and two image-history pools ``pool_A`` / ``pool_B``. Per iteration, as in the
authors' reference code: one generator update of both translators, then one critic update of
both critics on real images and on generated images drawn through the pools.

Generator loss (the paper's eq. 3 plus the identity term of its section 5.2)::

    adv(D_B(G_AB(a)), real) + adv(D_A(G_BA(b)), real)
    + lambda_cycle * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)
    + lambda_identity * lambda_cycle * (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)

Critic loss: ``0.5 * (adv(D(real), real) + adv(D(pooled fake), fake))`` per critic. ``adv`` is
least squares (``gan_loss=lsgan``, the paper's choice: MSE to 1 / 0) or the log loss of seed 002's
objective (``gan_loss=log``: binary cross-entropy on logits; the generator maximises
``log D(G(x))``, the non-saturating form the reference code uses).

Defaults are the paper's: Adam 2e-4, betas (0.5, 0.999), lambda 10, identity 0.5, pool 50. The
paper trains at batch 1 with a constant rate for 100 epochs and a linear decay over 100 more: a
cyclegan run defaults to ``--batch 1`` and ``decay_fraction=0.5`` (``run_defaults``; given values win).

**Image pool and exact resume.** The critics see generated images drawn from a history of the
last 50 (Shrivastava et al. 2017): each new image is stored and shown while the pool fills; once
full, with probability 1/2 it replaces a random stored image, which is shown instead. The pools'
contents are state that changes every iteration and cannot be re-derived without replaying the
run, so each pool is a module (:class:`ImagePool`) among the recipe's networks whose contents are
registered buffers: every checkpoint holds them and a resume restores them with the weights. Its
random choices come from a generator seeded with ``(seed, iteration, pool)``, not from a running
generator, so a resumed run draws what the uninterrupted one did. Under ``torchrun`` the ranks
gather their generated images, query one pool with the global batch (the pools are identical on
every rank) and each keeps its own slots: N ranks compute what one process does at the same
global batch, and rank 0's checkpoint is every rank's state.

The critic update reuses the translations of the generator update of the same iteration (as the
reference code does: they are made by the generators before their update); a critic phase run
on its own (e.g. by the speed benchmark) translates the batch itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr import losses
from facexpr.data.dataset import PreparedDataset
from facexpr.errors import DatasetError
from facexpr.face.align import template_pixels
from facexpr.face.warp import OUTER_LIP
from facexpr.models.cyclegan import CycleGANConfig, PatchGANCritic, ResnetGenerator
from facexpr.training import reporting
from facexpr.training.data import label_index, resize_rgb, to_tensor_image
from facexpr.training.recipe import (
    Batch,
    Metrics,
    Phase,
    Recipe,
    RecipeConfig,
    StepContext,
    adam,
)

GAN_LOSSES = ("lsgan", "log")


# -- losses -------------------------------------------------------------------------------------


def gan_loss(logits: Tensor, real: bool, kind: str = "lsgan") -> Tensor:
    """The adversarial loss of critic outputs ``logits`` against the label real (1) / fake (0).

    ``lsgan``: mean squared error to the label (Mao et al. 2017, CycleGAN's choice);
    ``log``: binary cross-entropy of ``sigmoid(logits)`` (the original GAN log loss).
    """
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    if kind == "log":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")


def mouth_box(size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixels of the mouth region of an aligned ``size`` crop: the template's
    outer-lip box, grown by a quarter of its width sideways and half its height up and down (the
    smile folds and the chin move with the mouth). It covers about 8 % of the crop."""
    lip = template_pixels(size)[list(OUTER_LIP)]
    (x0, y0), (x1, y1) = lip.min(axis=0), lip.max(axis=0)
    w, h = x1 - x0, y1 - y0
    box = (x0 - 0.25 * w, y0 - 0.5 * h, x1 + 0.25 * w, y1 + 0.5 * h)
    return tuple(int(np.clip(round(v), 0, size)) for v in box)  # type: ignore[return-value]


def mouth_focus(source: Tensor, output: Tensor) -> float:
    """How concentrated on the mouth the change ``|output - source|`` of aligned crops is: the
    change's share inside :func:`mouth_box` over the box's share of the crop. 1 is a change spread
    evenly (or none at all); a change confined to the mouth approaches 1 / (the box's area share),
    about 12; below 1 the rest of the face changed more."""
    change = (output.float() - source.float()).abs().sum(dim=(0, 1))  # (S, S)
    size = change.shape[-1]
    x0, y0, x1, y1 = mouth_box(size)
    total = float(change.sum())
    if total <= 0:
        return 1.0
    area_share = (x1 - x0) * (y1 - y0) / size**2
    return float(change[y0:y1, x0:x1].sum()) / total / area_share


# -- the image pool -----------------------------------------------------------------------------


class ImagePool(nn.Module):
    """A history of generated images whose contents live in buffers (so checkpoints hold them).

    ``images`` (capacity, 3, S, S) float32 and ``count`` (how many slots are filled). No
    parameters: no optimiser touches it.
    """

    def __init__(self, capacity: int, image_size: int) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self.register_buffer("images", torch.zeros(self.capacity, 3, image_size, image_size))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def query(self, fakes: Tensor, generator: torch.Generator) -> Tensor:
        """The images to show the critic for ``fakes`` (B,3,S,S), updating the history.

        Zhu et al.'s rule, face by face in batch order; the coin flips and slots come from
        ``generator`` (CPU), drawn up front, two numbers per face.
        """
        fakes = fakes.detach().float()
        if self.capacity == 0:
            return fakes
        b = fakes.shape[0]
        coins = torch.rand(b, generator=generator).tolist()
        slots = torch.randint(self.capacity, (b,), generator=generator).tolist()
        out = []
        filled = int(self.count)
        for i in range(b):
            if filled < self.capacity:
                self.images[filled] = fakes[i]
                filled += 1
                out.append(fakes[i])
            elif coins[i] > 0.5:
                out.append(self.images[slots[i]].clone())
                self.images[slots[i]] = fakes[i]
            else:
                out.append(fakes[i])
        self.count.fill_(filled)
        return torch.stack(out)


def pool_generator(seed: int, iteration: int, which: int) -> torch.Generator:
    """The random numbers of pool ``which`` (0 = A, 1 = B) at ``iteration``: a pure function."""
    return torch.Generator().manual_seed(((seed << 33) + 2 * iteration + which) % (1 << 63))


def gather_global(x: Tensor, ctx: StepContext) -> Tensor:
    """This rank's slice of a batch -> the global batch in sampler order (rank r holds global
    slots r, r + world, ...). The identity in a single process."""
    if ctx.world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)


# -- data ---------------------------------------------------------------------------------------


class UnpairedImages(Dataset):
    """Items ``{image_a, image_b}``: unpaired faces of the two domains.

    One item per training row: the row's own face on its side, and a face of the other domain
    drawn uniformly, so an epoch shows every face of either domain at least once. The partner
    and both flips are keyed by ``(seed, epoch, position)``, so resumes are exact.
    """

    def __init__(self, prepared: PreparedDataset, rows: NDArray[np.integer], domains: tuple[str, str],
                 size: int, seed: int = 0, flip: bool = True) -> None:
        self.prepared = prepared
        index = label_index(prepared, domains)
        rows = np.asarray(rows, np.int64)
        self.rows = rows[index[rows] >= 0]
        self.side = index[self.rows]
        self.pools = (self.rows[self.side == 0], self.rows[self.side == 1])
        if min(len(p) for p in self.pools) < 1:
            raise DatasetError(f"no training faces labelled {domains[0]} or none labelled {domains[1]}")
        self.size = int(size)
        self.seed = int(seed)
        self.flip = bool(flip)

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, row: int, flipped: bool) -> Tensor:
        rgb = resize_rgb(self.prepared.image(row), self.size)
        return to_tensor_image(rgb[:, ::-1] if flipped else rgb)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        rng = np.random.default_rng((self.seed, epoch, pos))
        own, side = int(self.rows[pos]), int(self.side[pos])
        others = self.pools[1 - side]
        other = int(others[rng.integers(len(others))])
        flip_a = self.flip and rng.random() < 0.5
        flip_b = self.flip and rng.random() < 0.5
        row_a, row_b = (own, other) if side == 0 else (other, own)
        return {"image_a": self._image(row_a, flip_a), "image_b": self._image(row_b, flip_b),
                "index": torch.tensor(own)}


# -- the recipe ---------------------------------------------------------------------------------


@dataclass
class CycleGANTrainConfig(RecipeConfig):
    """The CycleGAN paper's options (Zhu et al. 2017, section 4 and appendix 7.1)."""

    gan_loss: str = "lsgan"  # "lsgan" (the paper's) or "log" (seed 002's log loss)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle
    pool_size: int = 50  # generated images remembered per critic; 0 = no history

    def problems(self) -> list[str]:
        out = super().problems()
        if self.gan_loss not in GAN_LOSSES:
            out.append(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, got {self.gan_loss!r}")
        if self.pool_size < 0:
            out.append("pool_size must be >= 0 (0 = no image history)")
        return out


@dataclass
class DomainSamples:
    a: Tensor
    b: Tensor


class CycleGANRecipe(Recipe):
    families = ("cyclegan",)
    Config = CycleGANTrainConfig
    exports = {"G_AB": "G_AB", "G_BA": "G_BA"}
    run_defaults = {"batch": 1, "decay_fraction": 0.5}  # the paper: batch 1, decay over the second half
    cfg: CycleGANTrainConfig
    model_config: CycleGANConfig

    def __init__(self, family: str, model_config: Any, config: CycleGANTrainConfig, ctx: StepContext) -> None:
        super().__init__(family, model_config, config, ctx)
        self._fakes: tuple[int, Tensor, Tensor] | None = None  # (iteration, G_BA(b), G_AB(a)) of the G phase

    @property
    def domains(self) -> tuple[str, str]:
        return self.model_config.label_names

    def networks(self) -> dict[str, nn.Module]:
        c = self.model_config
        return {"G_AB": ResnetGenerator(c), "G_BA": ResnetGenerator(c),
                "D_A": PatchGANCritic(c), "D_B": PatchGANCritic(c),
                "pool_A": ImagePool(self.cfg.pool_size, c.image_size),
                "pool_B": ImagePool(self.cfg.pool_size, c.image_size)}

    def optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        betas = (self.cfg.beta1, self.cfg.beta2)
        return {"G": adam([*nets["G_AB"].parameters(), *nets["G_BA"].parameters()], self.cfg.lr_g, betas),
                "D": adam([*nets["D_A"].parameters(), *nets["D_B"].parameters()], self.cfg.lr_d, betas)}

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("G", "G"), Phase("D", "D"))

    # -- data --------------------------------------------------------------------------------
    def training_rows(self, prepared: PreparedDataset, rows: np.ndarray) -> np.ndarray:
        index = label_index(prepared, self.domains)
        kept = rows[index[rows] >= 0]
        n_a, n_b = int((index[kept] == 0).sum()), int((index[kept] == 1).sum())
        if min(n_a, n_b) < 2:
            a, b = self.domains
            raise DatasetError(
                f"{self.family} translates between {a} and {b} faces and needs at least 2 of each in the training "
                f"split; it has {n_a} {a} and {n_b} {b} (the 'expression' column of labels.csv). Add labelled "
                f"faces, or choose two expressions the data has with --set domain_a=... --set domain_b=...")
        return kept

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        return UnpairedImages(prepared, rows, self.domains, size, seed, flip)

    # -- losses ------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        if phase == "G":
            return self.generator_step(batch, ctx)
        return self.critic_step(batch, ctx)

    def generator_step(self, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        n, c, kind = self.nets, self.cfg, self.cfg.gan_loss
        a, b = batch.image_a, batch.image_b
        fake_b = n["G_AB"](a)
        fake_a = n["G_BA"](b)
        adv_ab = gan_loss(n["D_B"](fake_b), True, kind)
        adv_ba = gan_loss(n["D_A"](fake_a), True, kind)
        cyc_a = losses.l1(n["G_BA"](fake_b), a)
        cyc_b = losses.l1(n["G_AB"](fake_a), b)
        total = adv_ab + adv_ba + c.lambda_cycle * (cyc_a + cyc_b)
        metrics = {"g/adv_ab": adv_ab.detach(), "g/adv_ba": adv_ba.detach(),
                   "g/cycle_a": cyc_a.detach(), "g/cycle_b": cyc_b.detach()}
        if c.lambda_identity > 0:
            idt_b = losses.l1(n["G_AB"](b), b)
            idt_a = losses.l1(n["G_BA"](a), a)
            total = total + c.lambda_identity * c.lambda_cycle * (idt_a + idt_b)
            metrics.update({"g/identity_a": idt_a.detach(), "g/identity_b": idt_b.detach()})
        self._fakes = (ctx.iteration, fake_a.detach(), fake_b.detach())
        return total, {"g/total": total.detach(), **metrics}

    def critic_step(self, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        n, kind = self.nets, self.cfg.gan_loss
        a, b = batch.image_a, batch.image_b
        if self._fakes is not None and self._fakes[0] == ctx.iteration:
            _, fake_a, fake_b = self._fakes
        else:
            with torch.no_grad():
                fake_a, fake_b = n["G_BA"](b), n["G_AB"](a)
        self._fakes = None
        shown_a = self._through_pool("pool_A", fake_a, ctx, 0)
        shown_b = self._through_pool("pool_B", fake_b, ctx, 1)
        real_a, real_b = n["D_A"](a), n["D_B"](b)
        out_a, out_b = n["D_A"](shown_a), n["D_B"](shown_b)
        d_a = 0.5 * (gan_loss(real_a, True, kind) + gan_loss(out_a, False, kind))
        d_b = 0.5 * (gan_loss(real_b, True, kind) + gan_loss(out_b, False, kind))
        total = d_a + d_b
        return total, {"d/total": total.detach(), "d/a": d_a.detach(), "d/b": d_b.detach(),
                       "d/real_a": real_a.detach().float().mean(), "d/fake_a": out_a.detach().float().mean(),
                       "d/real_b": real_b.detach().float().mean(), "d/fake_b": out_b.detach().float().mean()}

    def _through_pool(self, name: str, fakes: Tensor, ctx: StepContext, which: int) -> Tensor:
        shown = self.nets[name].query(gather_global(fakes, ctx), pool_generator(ctx.seed, ctx.iteration, which))
        return shown[ctx.rank::ctx.world_size].to(fakes.dtype)

    # -- validation --------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int,
                   device: torch.device) -> DomainSamples:
        """Up to ``n`` held-back faces of each domain (faces of other expressions stand in for a
        domain the held-back people lack, so the grid always has both bands)."""
        index = label_index(prepared, self.domains)
        rows = [int(r) for r in rows]
        picks = []
        for side in (0, 1):
            own = [r for r in rows if index[r] == side]
            rest = [r for r in rows if index[r] == -1] or [r for r in rows if index[r] != side] or rows
            picks.append((own or rest)[: max(1, n)])

        def load(idx: list[int]) -> Tensor:
            return torch.stack([to_tensor_image(resize_rgb(prepared.image(i), size)) for i in idx]).to(device)

        return DomainSamples(load(picks[0]), load(picks[1]))

    @torch.no_grad()
    def report(self, samples: DomainSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Grid: a band of a-faces (source | a->b | back to a) over a band of b-faces. Validation
        on those faces (images in [-1, 1]): the cycle L1 and the change L1 of each direction, and
        how much the change concentrates on the mouth (:func:`mouth_focus`)."""
        G_AB, G_BA = self.nets["G_AB"], self.nets["G_BA"]
        a_name, b_name = self.domains
        with autocast():
            ab = G_AB(samples.a).float()
            aba = G_BA(ab).float()
            ba = G_BA(samples.b).float()
            bab = G_AB(ba).float()
        grid_a = reporting.labelled_grid([samples.a, ab, aba], [a_name, f"to {b_name}", "cycle"])
        grid_b = reporting.labelled_grid([samples.b, ba, bab], [b_name, f"to {a_name}", "cycle"])
        cyc_a = float((aba - samples.a).abs().mean())
        cyc_b = float((bab - samples.b).abs().mean())
        return np.concatenate([grid_a, grid_b], axis=0), {
            "cycle_l1_a": cyc_a, "cycle_l1_b": cyc_b, "cycle_l1": 0.5 * (cyc_a + cyc_b),
            "change_l1_a": float((ab - samples.a).abs().mean()),
            "change_l1_b": float((ba - samples.b).abs().mean()),
            "mouth_focus_a": mouth_focus(samples.a, ab),
            "mouth_focus_b": mouth_focus(samples.b, ba),
        }
