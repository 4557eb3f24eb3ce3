"""Training recipe of ``unet-cgan``: the identity-preserving U-Net conditional GAN of seed 004.

Per iteration one critic update, then one generator update (pix2pix's 1:1 schedule), with the
non-saturating log loss of pix2pix (binary cross-entropy on logits) and Adam 2e-4, betas
(0.5, 0.999).

Every item of :class:`ExpressionPairItems` holds an input face ``x`` with its label, a target
label ``c`` (a uniformly drawn other label), ``target_image``: the same person's real photo in
``c`` where one exists (``has_target``; else ``x`` itself), and ``other``: a real face of another
person in ``c`` (``has_other``; else another person's face in any expression).

Critic (on pairs, :class:`~facexpr.models.unet_cgan.PairCritic`)::

    0.5 * (bce(D(x, target_image), real) + bce(D(x, G(x, c)), fake)
           + lambda_other_id * bce(D(x, other), fake) [items with has_other])
    + lambda_cls * CE(D_cls(x, target_image), label of target_image)

The *identity pairs* of the paper: a real face of another person in the target expression,
shown with ``x``, is a fake pair, so the critic must judge whether the candidate is the input's
person as well as whether it is a real face. Where the person has no photo in ``c`` (unpaired
data), the real pair is ``(x, x)``: a real same-person pair, labelled with ``x``'s own expression
for the class head.

Generator::

    bce(D(x, G(x, c)), real) + lambda_cls * CE(D_cls(x, G(x, c)), c)
    + lambda_l1 * |G(x, c) - target_image|_1         [paired items only]
    + lambda_triplet * relu(d(e(G(x,c)), e(pos)) - d(e(G(x,c)), e(other)) + margin)
    + id_weight * d(e(G(x, c)), e(x))                 (facexpr.training.identity)

``e`` is dlib's face descriptor in torch (:func:`facexpr.training.identity.embed`: the crop
resampled into dlib's chip frame, :class:`~facexpr.face.identity_net.IdentityNet`, frozen), ``d``
the Euclidean distance (< 0.6 = same person), ``pos`` = ``target_image`` (the same person's real
target photo, or ``x``). **Paired** means: the item has a same-person target photo *and* its
dataset is listed in ``paired_sets`` (posed studio sets whose photos of one person are pixel-
comparable, like Taiwanese); an LFW person's other photo is a valid real pair and triplet positive
but differs in pose and background, so no L1 is asked of it.

Terms that apply to some items only (L1 of pairs, other-identity pairs) are summed over those
items and divided by the batch size, not by their count: every item weighs the same, and N ranks
compute exactly what one process does. The logged ``g/l1_paired`` is the mean over the pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from facexpr import losses
from facexpr.data.dataset import PreparedDataset
from facexpr.errors import DatasetError
from facexpr.training import reporting
from facexpr.training.data import label_index, resize_rgb, to_tensor_image
from facexpr.training.identity import IdentityLossOptions, embed, identity_term
from facexpr.training.recipe import Batch, Metrics, Phase, Recipe, StepContext

# -- data -----------------------------------------------------------------------------------------


def set_names(prepared: PreparedDataset) -> NDArray[np.str_]:
    """Each row's dataset name (``dataset.json`` name, e.g. ``taiwanese``; merged sets keep theirs)."""
    parts = prepared._parts  # no public per-row accessor: the split and merge use the same fields
    return np.array([parts[int(p)].name for p in prepared._part_index]) if len(prepared) else np.zeros(0, str)


def identity_codes(prepared: PreparedDataset) -> NDArray[np.int64]:
    """An integer per row naming its person; a row without an identity is a person of its own."""
    codes: dict[str, int] = {}
    out = np.empty(len(prepared), np.int64)
    for i, ident in enumerate(prepared.identities):
        out[i] = codes.setdefault(ident if ident else f"\0row{i}", len(codes))
    return out


class ExpressionPairItems(Dataset):
    """Items ``{image, label, target, target_image, has_target, paired, other, has_other}`` (see
    the module docstring); ``label``/``target`` one-hot, flags float 0/1.

    Every choice (flip, target label, which same-person and which other-person photo) is drawn
    from a generator seeded with ``(seed, epoch, position)``, so resumes are exact. A flip mirrors
    all three images of an item alike. The photos are drawn from ``rows`` only (the training
    split: validation people never appear as targets or negatives).
    """

    def __init__(self, prepared: PreparedDataset, rows: NDArray[np.integer], labels: tuple[str, ...], size: int,
                 seed: int = 0, flip: bool = True, paired_sets: tuple[str, ...] = ()) -> None:
        self.prepared = prepared
        self.rows = np.asarray(rows, np.int64)
        self.n = len(labels)
        self.index = label_index(prepared, labels)
        if (self.index[self.rows] < 0).any():
            raise DatasetError("ExpressionPairItems needs labelled rows (use the recipe's training_rows)")
        self.ident = identity_codes(prepared)
        self.paired_set = np.isin(set_names(prepared), list(paired_sets)) if paired_sets else np.zeros(len(prepared), bool)
        self.size = int(size)
        self.seed = int(seed)
        self.flip = bool(flip)
        lab = self.index[self.rows]
        self.by_label = [self.rows[lab == k] for k in range(self.n)]
        groups: dict[tuple[int, int], list[int]] = {}
        for r in self.rows.tolist():
            groups.setdefault((int(self.ident[r]), int(self.index[r])), []).append(r)
        #: (person, label) -> that person's rows with that label
        self.same = {k: np.asarray(v, np.int64) for k, v in groups.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def draw(self, epoch: int, pos: int) -> dict[str, int | bool]:
        """The item's choices, without reading any image."""
        rng = np.random.default_rng((self.seed, epoch, pos))
        flipped = self.flip and rng.random() < 0.5
        row = int(self.rows[pos])
        src, me = int(self.index[row]), int(self.ident[row])
        tgt = int(rng.integers(self.n - 1))
        tgt += tgt >= src
        same = self.same.get((me, tgt))
        has_target = same is not None and len(same) > 0
        target_row = int(same[rng.integers(len(same))]) if has_target else row
        pool = self.by_label[tgt]
        others = pool[self.ident[pool] != me]
        has_other = len(others) > 0
        if not has_other:
            others = self.rows[self.ident[self.rows] != me]
        other_row = int(others[rng.integers(len(others))]) if len(others) else row
        return {"row": row, "source": src, "target": tgt, "flipped": flipped, "target_row": target_row,
                "has_target": has_target, "paired": has_target and bool(self.paired_set[row]),
                "other_row": other_row, "has_other": has_other}

    def _image(self, row: int, flipped: bool) -> Tensor:
        rgb = resize_rgb(self.prepared.image(row), self.size)
        return to_tensor_image(rgb[:, ::-1] if flipped else rgb)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        d = self.draw(epoch, pos)
        eye = torch.eye(self.n)
        image = self._image(d["row"], d["flipped"])
        return {
            "image": image,
            "label": eye[d["source"]],
            "target": eye[d["target"]],
            "target_image": self._image(d["target_row"], d["flipped"]) if d["has_target"] else image.clone(),
            "has_target": torch.tensor(float(d["has_target"])),
            "paired": torch.tensor(float(d["paired"])),
            "other": self._image(d["other_row"], d["flipped"]),
            "has_other": torch.tensor(float(d["has_other"])),
            "index": torch.tensor(d["row"]),
        }


# -- recipe ---------------------------------------------------------------------------------------


@dataclass
class UNetCGANTrainConfig(IdentityLossOptions):
    """pix2pix's optimiser and L1 weight (Isola et al. 2017); seed 004's identity terms."""

    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0  # L1 to the same person's real target photo (paired items)
    lambda_cls: float = 1.0  # expression class head, both sides
    lambda_triplet: float = 1.0  # triplet loss on dlib descriptors; 0 = off
    margin: float = 0.6  # triplet margin in descriptor distance (dlib: < 0.6 = same person)
    lambda_other_id: float = 1.0  # weight of the (input, other person) fake pairs; 0 = off
    paired_sets: str = "taiwanese"  # comma-separated dataset names whose same-person photos get L1

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.margin >= 0:
            out.append("margin must be >= 0")
        return out

    @property
    def paired_set_names(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.paired_sets.split(",") if x.strip())


def bce(logits: Tensor, real: bool) -> Tensor:
    """Per-item binary cross-entropy of patch logits against real (1) / fake (0), shape (B,)."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


@dataclass
class PairSamples:
    images: Tensor  # (B,3,S,S)
    labels: Tensor  # (B,L) one-hot
    truth: Tensor  # (B,L,3,S,S): the same person's real photo per label (zeros where none)
    has_truth: Tensor  # (B,L) 0/1


class UNetCGANRecipe(Recipe):
    families = ("unet-cgan",)
    Config = UNetCGANTrainConfig
    exports: ClassVar[dict[str, str]] = {"generator": "G"}
    cfg: UNetCGANTrainConfig

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model_config.label_names

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("G", "G"))

    # -- data --------------------------------------------------------------------------------
    def training_rows(self, prepared: PreparedDataset, rows: np.ndarray) -> np.ndarray:
        index = label_index(prepared, self.labels)
        kept = rows[index[rows] >= 0]
        if len(set(index[kept].tolist())) < 2 or len(set(identity_codes(prepared)[kept].tolist())) < 2:
            raise DatasetError(f"{self.family} needs faces of at least two people labelled with at least two of "
                               f"{', '.join(self.labels)}; the training split has {len(kept)} labelled face(s)")
        return kept

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        return ExpressionPairItems(prepared, rows, self.labels, size, seed, flip, self.cfg.paired_set_names)

    # -- losses ------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        return self.critic_step(batch) if phase == "D" else self.generator_step(batch)

    def critic_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        x = batch.image
        with torch.no_grad():
            fake = G(x, batch.target).result
        real_logits, real_cls = D(x, batch.target_image)
        fake_logits, _ = D(x, fake)
        d_real, d_fake = bce(real_logits, True).mean(), bce(fake_logits, False).mean()
        total = 0.5 * (d_real + d_fake)
        metrics: Metrics = {"d/real": d_real.detach(), "d/fake": d_fake.detach()}
        if c.lambda_other_id > 0:
            other_logits, _ = D(x, batch.other)
            d_other = (bce(other_logits, False) * batch.has_other).sum() / x.shape[0]
            total = total + 0.5 * c.lambda_other_id * d_other
            metrics["d/other_id"] = d_other.detach()
        real_label = torch.where(batch.has_target[:, None] > 0, batch.target, batch.label).argmax(1)
        cls = F.cross_entropy(real_cls.float(), real_label)
        total = total + c.lambda_cls * cls
        metrics.update({"d/total": total.detach(), "d/cls": cls.detach(),
                        "d/cls_acc_real": (real_cls.argmax(1) == real_label).float().mean()})
        return total, metrics

    def triplet_term(self, anchor: Tensor, positive: Tensor, negative: Tensor,
                     anchor_embedding: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``triplet_loss(e(anchor), e(positive), e(negative), margin)`` on face crops, and the two
        mean distances ``d(a, p)``, ``d(a, n)``; gradients reach ``anchor`` only."""
        a = anchor_embedding if anchor_embedding is not None else embed(anchor)
        p, n = embed(positive, grad=False), embed(negative, grad=False)
        loss = losses.triplet_loss(a, p, n, self.cfg.margin)
        with torch.no_grad():
            d_pos = torch.linalg.vector_norm(a - p, dim=-1).mean()
            d_neg = torch.linalg.vector_norm(a - n, dim=-1).mean()
        return loss, d_pos, d_neg

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        G, D, c = self.nets["G"], self.nets["D"], self.cfg
        x = batch.image
        fake = G(x, batch.target).result
        logits, cls_logits = D(x, fake)
        adv = bce(logits, True).mean()
        cls = F.cross_entropy(cls_logits.float(), batch.target.argmax(1))
        per_l1 = (fake.float() - batch.target_image.float()).abs().flatten(1).mean(1)
        l1 = (per_l1 * batch.paired).sum() / x.shape[0]
        total = adv + c.lambda_cls * cls + c.lambda_l1 * l1
        n_pairs = batch.paired.sum()
        metrics: Metrics = {"g/adv": adv.detach(), "g/cls": cls.detach(),
                            "g/l1_paired": ((per_l1 * batch.paired).sum() / n_pairs.clamp(min=1)).detach(),
                            "g/paired_fraction": n_pairs.detach() / x.shape[0]}
        e_fake = embed(fake) if (c.lambda_triplet > 0 or c.id_weight > 0) else None
        if c.lambda_triplet > 0:
            trip, d_pos, d_neg = self.triplet_term(fake, batch.target_image, batch.other, e_fake)
            total = total + c.lambda_triplet * trip
            metrics.update({"g/triplet": trip.detach(), "g/d_positive": d_pos, "g/d_negative": d_neg})
        total = total + identity_term(c.id_weight, fake, x, metrics, e_fake)
        metrics["g/total"] = total.detach()
        return total, metrics

    # -- validation --------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int,
                   device: torch.device) -> PairSamples:
        """Up to ``n`` labelled faces, half from the paired sets (their people's real photos in
        every expression are shown beside the translations), spread over the pool."""
        index = label_index(prepared, self.labels)
        labelled = np.asarray([int(r) for r in rows if index[int(r)] >= 0] or [int(r) for r in rows], np.int64)
        paired = np.isin(set_names(prepared)[labelled], list(self.cfg.paired_set_names))
        n = max(2, n)
        n_paired = min(int(paired.sum()), (n + 1) // 2)
        rest = labelled[~paired]
        n_rest = min(len(rest), n - n_paired)
        n_paired = min(int(paired.sum()), n - n_rest)

        def spread(pool: np.ndarray, k: int) -> list[int]:
            return [int(pool[int(j)]) for j in np.linspace(0, len(pool) - 1, k).round()] if k > 0 else []

        idx = spread(labelled[paired], n_paired) + spread(rest, n_rest)
        ident = identity_codes(prepared)
        L = len(self.labels)
        truth = torch.zeros(len(idx), L, 3, size, size)
        has = torch.zeros(len(idx), L)
        for b, r in enumerate(idx):
            if not paired[labelled.tolist().index(r)]:
                continue
            for k in range(L):
                same = [int(j) for j in labelled if ident[j] == ident[r] and index[j] == k]
                if same:
                    truth[b, k] = to_tensor_image(resize_rgb(prepared.image(same[0]), size))
                    has[b, k] = 1
        images = torch.stack([to_tensor_image(resize_rgb(prepared.image(i), size)) for i in idx])
        labels = torch.eye(L)[np.maximum(index[idx], 0)]
        return PairSamples(images.to(device), labels.to(device), truth.to(device), has.to(device))

    @torch.no_grad()
    def report(self, samples: PairSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Grid: one row per face (source, then every label); under each face whose person has
        real photos, a row of them (grey where the person has none). Validation: the dlib
        descriptor distance of every translation to its source (the torch network on the chip
        of the crop), the L1 to the person's real photo in the target expression, and the
        critic's class accuracy on the translations."""
        G, D = self.nets["G"], self.nets["D"]
        x = samples.images
        b, L = x.shape[0], len(self.labels)
        e_src = embed(x, grad=False)
        outs, dists, hits, l1s = [], [], [], []
        for k in range(L):
            target = torch.zeros(b, L, device=x.device)
            target[:, k] = 1
            with autocast():
                out = G(x, target).result.float()
                hits.append((D(x, out)[1].argmax(1) == k).float().mean())
            outs.append(out)
            dists.append(torch.linalg.vector_norm(embed(out, grad=False) - e_src, dim=-1))
            m = samples.has_truth[:, k]
            if m.any():
                l1s.append((out - samples.truth[:, k]).abs().flatten(1).mean(1)[m > 0])
        rows_out: list[list[Tensor]] = [[] for _ in range(L + 1)]
        for i in range(b):
            rows_out[0].append(x[i])
            for k in range(L):
                rows_out[k + 1].append(outs[k][i])
            if samples.has_truth[i].any():
                rows_out[0].append(x[i])
                for k in range(L):
                    rows_out[k + 1].append(samples.truth[i, k] if samples.has_truth[i, k] else torch.zeros_like(x[i]))
        grid = reporting.labelled_grid([torch.stack(col) for col in rows_out], ["source", *self.labels])
        val = {"id_distance": float(torch.stack(dists).mean()), "cls_acc_fake": float(torch.stack(hits).mean())}
        if l1s:
            val["paired_l1"] = float(torch.cat(l1s).mean())
        return grid, val
