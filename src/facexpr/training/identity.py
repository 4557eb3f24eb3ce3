"""A reusable identity term for any recipe: dlib's descriptor (in torch) of a generator's output.

``id_weight * identity_loss(IdentityNet(crop_to_chip(output)), IdentityNet(crop_to_chip(source)))``
on facexpr's aligned crops: :func:`facexpr.face.identity_net.crop_to_chip` resamples a crop into
dlib's 150 px chip frame with one fixed similarity, :class:`~facexpr.face.identity_net.IdentityNet`
is dlib's network with its weights, frozen; the distance is the one the evaluation reports
(Euclidean, < 0.6 = same person), so ``g/id_distance`` reads on the scale of ``facexpr evaluate``.

A recipe enables it in two lines: its ``Config`` derives from :class:`IdentityLossOptions` (the
option ``id_weight``, 0 = off, settable with ``--set id_weight=...``), and its generator loss adds
``identity_term(self.cfg.id_weight, fake, batch.image, metrics)``.

The identity network is not one of the recipe's networks: it has no trainable state, so it is not
checkpointed, not broadcast across ranks and no optimiser sees it. It is loaded once per process
and device (:func:`identity_net`), kept in eval mode with ``requires_grad=False``, and always run
in float32 (outside autocast): gradients reach the generator through its input only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from facexpr.face.identity_net import IdentityNet, crop_to_chip
from facexpr.losses import identity_loss
from facexpr.training.recipe import Metrics, RecipeConfig

__all__ = ["IdentityLossOptions", "embed", "identity_net", "identity_term"]


@dataclass
class IdentityLossOptions(RecipeConfig):
    """Base of a recipe's options that adds the identity term."""

    id_weight: float = 0.0  # weight of the dlib-descriptor distance between output and input; 0 = off

    def problems(self) -> list[str]:
        return super().problems() + (["id_weight must be >= 0 (0 = off)"] if not self.id_weight >= 0 else [])


@lru_cache(maxsize=4)
def _load(device: str) -> IdentityNet:
    return IdentityNet.from_pretrained(device=device)


def identity_net(device: torch.device | str) -> IdentityNet:
    """The shipped identity network on ``device``, frozen and in eval mode (loaded once)."""
    return _load(str(torch.device(device)))


def embed(crops: Tensor, grad: bool = True) -> Tensor:
    """(B, 128) dlib descriptors of facexpr crops (B, 3, S, S) in [-1, 1], in float32.

    ``grad=False`` for targets (no graph is kept); with ``grad=True`` the descriptors are
    differentiable with respect to ``crops``.
    """
    net = identity_net(crops.device)
    with torch.autocast(device_type=crops.device.type, enabled=False), torch.set_grad_enabled(grad):
        return net(crop_to_chip(crops.float()))


def identity_term(weight: float, output: Tensor, source: Tensor, metrics: Metrics | None = None,
                  output_embedding: Tensor | None = None) -> Tensor:
    """``weight * identity_loss(e(output), e(source))`` (a zero tensor when ``weight == 0``).

    ``source`` is the target (no gradient); ``output_embedding`` reuses descriptors of ``output``
    the caller already computed. The unweighted distance goes into ``metrics['g/id_distance']``.
    """
    if not weight:
        return output.new_zeros((), dtype=torch.float32)
    e_out = output_embedding if output_embedding is not None else embed(output)
    distance = identity_loss(e_out, embed(source, grad=False))
    if metrics is not None:
        metrics["g/id_distance"] = distance.detach()
    return weight * distance
