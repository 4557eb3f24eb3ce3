"""The family registry behind :mod:`facexpr.models` (see its docstring): every torch family's
model module, ``FAMILIES`` and the generator-level ``save_pretrained`` / ``from_pretrained``.

Importing this module imports torch and every family; ``facexpr.models`` loads it on the first
use of one of its names, so the geometry family (numpy only) starts without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facexpr.errors import ConfigError
from facexpr.models import cyclegan as _cyclegan
from facexpr.models import dftnet as _dftnet
from facexpr.models import ganimation as _ganimation
from facexpr.models import mouth as _mouth
from facexpr.models import sagan as _sagan
from facexpr.models import stargan as _stargan
from facexpr.models import unet_cgan as _unet_cgan
from facexpr.models.base import (
    AU_CONDITION,
    CONDITION_CONVENTION,
    DIRECT_OUTPUT_CONVENTION,
    EMOTION_CONDITION,
    EMOTION_LABELS,
    FLOW_OUTPUT_CONVENTION,
    Condition,
    OUTPUT_CONVENTION,
    GeneratorOutput,
    ModelFamily,
    config_from_dict,
)
from facexpr.models.pretrained import load_generator, read_model_config
from facexpr.models.pretrained import save_pretrained as _save_pretrained

__all__ = [
    "AU_CONDITION",
    "EMOTION_CONDITION",
    "EMOTION_LABELS",
    "Condition",
    "CONDITION_CONVENTION",
    "FLOW_OUTPUT_CONVENTION",
    "OUTPUT_CONVENTION",
    "GeneratorOutput",
    "ModelFamily",
    "FAMILIES",
    "au_condition",
    "condition_of",
    "family_names",
    "get_family",
    "family_of",
    "save_pretrained",
    "from_pretrained",
    "read_model_config",
    "config_from_dict",
]

_PAPER = "Pumarola et al., GANimation: Anatomically-aware Facial Animation from a Single Image, ECCV 2018"

_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="ganimation",
        description="AU-conditioned G (label maps concatenated) with attention + colour masks; "
        "WGAN-GP PatchGAN critic with AU regression head",
        config_cls=_ganimation.GANimationConfig,
        build_generator=_ganimation.GANimationGenerator,
        build_critic=_ganimation.build_critic,
        presets=_ganimation.PRESETS,
        recipe="facexpr.training.recipe_ganimation:GANimationRecipe",
        paper=_PAPER,
    ),
    ModelFamily(
        name="ganimation-adain",
        description="GANimation with a domain-embedding FC layer driving AdaIN residual blocks "
        "(label size free)",
        config_cls=_ganimation.GANimationAdaINConfig,
        build_generator=_ganimation.GANimationAdaINGenerator,
        build_critic=_ganimation.build_critic,
        presets=_ganimation.PRESETS,
        recipe="facexpr.training.recipe_ganimation:GANimationRecipe",
        paper=_PAPER + "; AdaIN conditioning as in Huang & Belongie 2017",
    ),
    ModelFamily(
        name="dftnet",
        description="DFT-Net: shared encoder, appearance-flow + attention decoder and texture decoder "
        "with skips; bilinear warping; WGAN-GP PatchGAN critic with AU regression head",
        config_cls=_dftnet.DFTNetConfig,
        build_generator=_dftnet.DFTNetGenerator,
        build_critic=_dftnet.build_critic,
        presets=_dftnet.PRESETS,
        recipe="facexpr.training.recipe_dftnet:DFTNetRecipe",
        paper="DFT-Net: disentangled flow and texture expression editing (seed 001)",
        output_convention=FLOW_OUTPUT_CONVENTION,
    ),
    ModelFamily(
        name="stargan",
        description="StarGAN: one-hot expression tiled into G's input, whole-image output; WGAN-GP "
        "PatchGAN critic with a classification head",
        config_cls=_stargan.StarGANConfig,
        build_generator=_stargan.StarGANGenerator,
        build_critic=_stargan.build_critic,
        presets=_stargan.PRESETS,
        recipe="facexpr.training.recipe_stargan:StarGANRecipe",
        paper="Choi et al., StarGAN: Unified Generative Adversarial Networks for Multi-Domain Image-to-Image "
        "Translation, CVPR 2018",
        output_convention=DIRECT_OUTPUT_CONVENTION,
        condition=_stargan.condition,
    ),
    ModelFamily(
        name="stargan-depth",
        description="StarGAN guided by a depth network and a depth critic (adversarial + classification, "
        "confidence penalty) during training; the exported generator is StarGAN's",
        config_cls=_stargan.StarGANConfig,
        build_generator=_stargan.StarGANDepthGenerator,
        build_critic=_stargan.build_critic,
        presets=_stargan.PRESETS,
        recipe="facexpr.training.recipe_stargan:StarGANDepthRecipe",
        paper="StarGAN with 3D depth and surface-normal guidance and a confidence penalty (seed 003)",
        output_convention=DIRECT_OUTPUT_CONVENTION,
        condition=_stargan.condition,
    ),
    ModelFamily(
        name="cyclegan",
        description="CycleGAN between two expressions: two ResNet translators (G_AB, G_BA), two 70x70 PatchGAN "
        "critics, least-squares (or log) adversarial + cycle + identity losses, image history pools",
        config_cls=_cyclegan.CycleGANConfig,
        build_generator=_cyclegan.CycleGANGenerator,
        build_critic=_cyclegan.build_critic,
        presets=_cyclegan.PRESETS,
        recipe="facexpr.training.recipe_cyclegan:CycleGANRecipe",
        paper="Zhu et al., Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks, "
        "ICCV 2017; trained between two expressions as in seed 002 (FacePaint)",
        output_convention=DIRECT_OUTPUT_CONVENTION,
        condition=_cyclegan.condition,
        components=("G_AB", "G_BA"),
    ),
    ModelFamily(
        name="sagan",
        description="Class-conditional self-attention GAN editor: StarGAN-style encoder-decoder with "
        "self-attention blocks, spectral norm, a K+1-output critic trained with seed 002's softmax "
        "cross-entropy losses (or WGAN-GP)",
        config_cls=_sagan.SAGANConfig,
        build_generator=_sagan.SAGANGenerator,
        build_critic=_sagan.build_critic,
        presets=_sagan.PRESETS,
        recipe="facexpr.training.recipe_sagan:SAGANRecipe",
        paper="Zhang et al., Self-Attention Generative Adversarial Networks, ICML 2019; with the modified "
        "softmax cross-entropy losses of seed 002 (FacePaint)",
        output_convention=DIRECT_OUTPUT_CONVENTION,
        condition=_sagan.condition,
    ),
    ModelFamily(
        name="unet-cgan",
        description="U-Net conditional GAN: one-hot expression at the input and the bottleneck, skip connections, "
        "whole-image output; PatchGAN critic on (input, candidate) pairs with a class head; other-identity "
        "fake pairs, triplet loss on dlib descriptors, L1 to the same person's target photo where paired",
        config_cls=_unet_cgan.UNetCGANConfig,
        build_generator=_unet_cgan.UNetGenerator,
        build_critic=_unet_cgan.build_critic,
        presets=_unet_cgan.PRESETS,
        recipe="facexpr.training.recipe_unet_cgan:UNetCGANRecipe",
        paper="Wang, Wang and Li, U-Net Conditional GANs for Photo-Realistic and Identity-Preserving Facial "
        "Expression Synthesis, ACM TOMM 2019 (seed 004); generator and critic after pix2pix (Isola et al. 2017)",
        output_convention=DIRECT_OUTPUT_CONVENTION,
        condition=_unet_cgan.condition,
    ),
    ModelFamily(
        name="mouth",
        description="Mouth-interior inpainter for the geometry model: a small U-Net paints teeth, cavity and "
        "tongue into the hole inside the lips of a mouth crop; PatchGAN critic on (image, hole), L1 + LSGAN",
        config_cls=_mouth.MouthConfig,
        build_generator=_mouth.MouthInpainter,
        build_critic=_mouth.MouthCritic,
        presets=_mouth.PRESETS,
        recipe="facexpr.training.recipe_mouth:MouthRecipe",
        paper="facexpr's own (the geometry model's `mouth: network`); critic after pix2pix's PatchGAN, "
        "least-squares loss after Mao et al. 2017",
        output_convention=_mouth.OUTPUT_CONVENTION,
        condition=_mouth.condition,
        size_field="size",
        size_from_data=False,
        save_model=_mouth.save_mouth_folder,
    ),
)

#: name -> family, read-only by convention.
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in _FAMILIES}


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(family_names())}") from None


def family_of(generator: nn.Module) -> ModelFamily:
    """The family a generator instance belongs to (from its ``family`` class attribute)."""
    name = getattr(generator, "family", None)
    if not isinstance(name, str):
        raise ConfigError(f"{type(generator).__name__} is not a registered facexpr generator")
    return get_family(name)


def au_condition(aus: Tensor) -> Tensor:
    """The generator/critic condition for OpenFace-scale AUs: ``aus / 5`` (0..5 -> 0..1)."""
    return AU_CONDITION.encode(aus)


def condition_of(generator: nn.Module) -> Condition:
    """What ``generator`` (a registered family's, with its ``config``) is conditioned on."""
    return family_of(generator).condition(generator.config)  # type: ignore[attr-defined]


def save_pretrained(
    generator: nn.Module,
    folder: str | os.PathLike[str],
    *,
    fp16: bool = False,
    model_card: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``generator`` as a model folder (safetensors + config.json + MODEL_CARD.md)."""
    family = family_of(generator)
    return _save_pretrained(
        family.component_modules(generator),
        generator.config,  # type: ignore[attr-defined]
        folder,
        family_name=family.name,
        condition=family.condition(generator.config),  # type: ignore[attr-defined]
        output_convention=family.output_convention,
        fp16=fp16,
        model_card=model_card,
        training=training,
        overwrite=overwrite,
    )


def from_pretrained(
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load a model folder's generator in eval mode with gradients off.

    float16 weights are cast to ``dtype`` (float32 by default: CPUs have no fast fp16 path).
    The folder's ``config.json`` stays available as ``generator.model_info``.
    """
    meta = read_model_config(folder)
    try:
        family = get_family(str(meta.get("family")))
        config_from_dict(family.config_cls, meta.get("config", {}))
    except ConfigError as exc:
        raise ConfigError(f"{Path(folder) / 'config.json'}: {exc}; re-export the model or fix its config.json") from exc
    generator = load_generator(folder, family, meta, device=device, dtype=dtype)
    generator.model_info = meta  # type: ignore[assignment]
    return generator
