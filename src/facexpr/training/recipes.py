"""The recipe registry: family name -> recipe class, checked against the model registry.

Every family in :data:`facexpr.models.FAMILIES` names its recipe (``"module:Class"``); this
module imports each one at import time and checks that it is a :class:`~.recipe.Recipe` whose
``families`` include that family, that its options do not shadow generic run options or the
family's architecture fields (``--set`` must be unambiguous), and that its exports match the
family's model components. A broken registration fails on ``import facexpr.training.recipes``,
not in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import importlib

from facexpr.errors import ConfigError
from facexpr.models import FAMILIES, ModelFamily
from facexpr.models.base import config_fields
from facexpr.training.recipe import Batch, Metrics, Phase, Recipe, RecipeConfig, StepContext

__all__ = ["Batch", "Metrics", "Phase", "Recipe", "RecipeConfig", "StepContext", "RECIPES", "recipe_for"]


def _load(family: ModelFamily) -> type[Recipe]:
    module_name, _, class_name = family.recipe.partition(":")
    recipe = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        raise TypeError(f"{family.recipe} (recipe of {family.name}) is not a Recipe")
    if family.name not in recipe.families:
        raise TypeError(f"{family.recipe} does not train {family.name} (it trains {recipe.families})")
    return recipe


def _check(family: ModelFamily, recipe: type[Recipe], generic: set[str]) -> None:
    options = {f.name for f in dataclasses.fields(recipe.Config)}
    clash = options & (generic | set(config_fields(family.config_cls)))
    if clash:
        raise TypeError(f"{recipe.__name__} options {sorted(clash)} shadow run or {family.name} model options")
    if set(recipe.run_defaults) - generic:
        raise TypeError(f"{recipe.__name__}.run_defaults {sorted(set(recipe.run_defaults) - generic)} are not run "
                        "options")
    if set(recipe.exports) != set(family.components):
        raise TypeError(f"{recipe.__name__} exports {sorted(recipe.exports)} but {family.name} ships "
                        f"{sorted(family.components)}")


def _registry() -> dict[str, type[Recipe]]:
    from facexpr.training.config import TrainConfig

    generic = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for name, family in FAMILIES.items():
        recipe = _load(family)
        _check(family, recipe, generic)
        out[name] = recipe
    return out


#: family name -> recipe class (every registered family is trainable).
RECIPES: dict[str, type[Recipe]] = _registry()


def recipe_for(name: str) -> type[Recipe]:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"model {name!r} has no training recipe; trainable: {', '.join(sorted(RECIPES))}") from None
