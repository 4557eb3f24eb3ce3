"""Model families: a registry ``name -> ModelFamily`` (config dataclass, G and critic builders).

Usage::

    from facexpr import models
    family = models.get_family("ganimation")
    config = family.make_config("small", image_size=128)
    G, D = family.build_generator(config), family.build_critic(config)
    out = G(images, aus / 5)            # GeneratorOutput(result, attention, colour, ...)
    models.save_pretrained(G, "my-model")
    G2 = models.from_pretrained("my-model", device="cpu")

Every generator takes ``(image (B,3,H,W) in [-1,1], cond (B,L))`` where for AU-conditioned
families ``cond = aus / 5`` (:func:`au_condition`), and returns :class:`GeneratorOutput` with
``result = attention * source + (1 - attention) * colour``.

The registry is a constant (no registration side effects elsewhere) in
:mod:`facexpr.models.families`, which imports torch and every family: it is loaded on the first
use of one of the names below, so ``facexpr.models.geometry`` (the default family, numpy only)
and the helpers in ``models.base`` and ``models.pretrained`` import without torch. A new family
adds its model module, its recipe module (``facexpr.training.recipe_<name>``) and one entry to
``families._FAMILIES`` naming both; ``facexpr.training.recipes`` checks at import that every
entry's recipe exists and belongs to it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from facexpr.models.families import (  # noqa: F401
        AU_CONDITION,
        CONDITION_CONVENTION,
        EMOTION_CONDITION,
        EMOTION_LABELS,
        FAMILIES,
        FLOW_OUTPUT_CONVENTION,
        OUTPUT_CONVENTION,
        Condition,
        GeneratorOutput,
        ModelFamily,
        au_condition,
        condition_of,
        config_from_dict,
        family_names,
        family_of,
        from_pretrained,
        get_family,
        read_model_config,
        save_pretrained,
    )


def __getattr__(name: str) -> Any:
    """The public names above, from :mod:`facexpr.models.families` (imported on first use)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("facexpr.models.families"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
