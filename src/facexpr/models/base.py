"""What every model family shares: the generator output record, the family descriptor and
config (de)serialisation.

Kept free of any family so that ``models.families`` can register families without circular
imports, and so the pipeline can depend on :class:`GeneratorOutput` alone; free of torch at
import (tensors appear only in annotations) so the geometry family and the model lookup need none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor, nn

from facexpr.errors import ConfigError
from facexpr.expression import AU_NAMES

# The convention every family follows (DESIGN.md); written into each model folder's config.json
# so a consumer never has to guess which way round the attention mask is.
OUTPUT_CONVENTION = "result = attention * source + (1 - attention) * colour"
FLOW_OUTPUT_CONVENTION = "result = attention * warped + (1 - attention) * texture"
DIRECT_OUTPUT_CONVENTION = "result = the generated image (no attention map)"
CONDITION_CONVENTION = "aus / 5"

#: The seven basic emotions every labelled shared set has, in the order of one-hot conditions.
EMOTION_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted")


@dataclass(frozen=True)
class Condition:
    """What a family's generator is conditioned on, and how a request becomes its input.

    ``kind="aus"``: the 17 OpenFace-scale AU intensities; the network sees ``aus / 5``.
    ``kind="labels"``: one expression label out of ``labels`` (one-hot; a CycleGAN's two domains
    are two labels). ``kind="reference"``: a reference photo's look (neural style transfer), no
    condition vector at all. ``interpolates``: whether a condition between two requests is meaningful, i.e.
    whether ``--intensity`` below 1 can be honoured.
    """

    kind: str
    labels: tuple[str, ...]
    interpolates: bool

    def encode(self, values: Tensor) -> Tensor:
        """The network input for request values: AUs on the 0..5 scale, or one-hot rows."""
        return values / 5.0 if self.kind == "aus" else values

    def one_hot(self, label: str) -> "list[float]":
        if label not in self.labels:
            raise ConfigError(f"this model knows the expressions {', '.join(self.labels)}; "
                              f"{label!r} is not one of them")
        return [1.0 if name == label else 0.0 for name in self.labels]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels), "interpolates": self.interpolates,
                **({"network_input": CONDITION_CONVENTION} if self.kind == "aus" else {})}

    @classmethod
    def from_json(cls, doc: Any) -> "Condition":
        """From a model folder's ``condition`` entry; the older string form means AUs."""
        if isinstance(doc, dict) and doc.get("kind") == "labels":
            return cls("labels", tuple(str(x) for x in doc.get("labels", ())), bool(doc.get("interpolates", False)))
        if isinstance(doc, dict) and doc.get("kind") == "reference":
            return REFERENCE_CONDITION
        return AU_CONDITION


AU_CONDITION = Condition("aus", tuple(AU_NAMES), True)
EMOTION_CONDITION = Condition("labels", EMOTION_LABELS, False)
REFERENCE_CONDITION = Condition("reference", (), False)


@dataclass
class GeneratorOutput:
    """All tensors a generator produces, so losses, sample grids and the pipeline can use them.

    ``result``, ``colour``, ``warped`` and ``texture`` are ``(B,3,H,W)`` in ``[-1, 1]``;
    ``attention`` is ``(B,1,H,W)`` in ``[0, 1]`` and is 1 where the source (or warped) pixel is
    kept; ``flow`` is ``(B,2,H,W)`` in normalised ``[-1, 1]`` grid units. Families leave the
    fields they do not have as ``None``.
    """

    result: Tensor
    attention: Tensor | None = None
    colour: Tensor | None = None
    flow: Tensor | None = None
    warped: Tensor | None = None
    texture: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFamily:
    """A registered family: its config dataclass, the builder of the network an exported model
    runs (``build_generator``), what it is conditioned on, and where its training recipe lives.

    ``recipe`` is the dotted path ``"module:Class"`` of the family's recipe in
    ``facexpr.training`` (an upper layer: models never import it; the training registry checks
    at import that every path resolves to a recipe of this family). ``components`` names the
    weight files of an exported model: ``("generator",)`` is the whole generator in
    ``generator.safetensors``; other names are sub-modules of the built generator, one file each
    (a CycleGAN ships its two translators). ``build_critic`` is kept for families whose recipes
    share a critic builder; recipes declare their own networks.

    ``size_field`` is the config field ``facexpr train --size`` sets (the side of the network's
    input); with ``size_from_data`` an unset ``--size`` means the prepared data's crop size (face
    families train on the crops as they are), without it the config's own default (the mouth
    network cuts its own crop out of any face crop). ``save_model`` writes an exported model in
    the family's own folder format (``(generator, folder, *, fp16, model_card, training,
    overwrite) -> Path``); None = a facexpr model folder (:func:`facexpr.models.save_pretrained`).
    """

    name: str
    description: str
    config_cls: type
    build_generator: Callable[[Any], nn.Module]
    presets: dict[str, dict[str, Any]]
    recipe: str
    build_critic: Callable[[Any], nn.Module] | None = None
    paper: str = ""
    output_convention: str = OUTPUT_CONVENTION
    condition: Callable[[Any], Condition] = lambda config: AU_CONDITION
    components: tuple[str, ...] = ("generator",)
    size_field: str = "image_size"
    size_from_data: bool = True
    save_model: Callable[..., Any] | None = None

    def component_modules(self, generator: nn.Module) -> dict[str, nn.Module]:
        """Component name -> the module whose state dict is stored under that name."""
        if self.components == ("generator",):
            return {"generator": generator}
        return {name: getattr(generator, name) for name in self.components}

    def make_config(self, preset: str | None = None, **overrides: Any) -> Any:
        """Config from a named preset plus overrides; unknown names raise :class:`ConfigError`."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                raise ConfigError(
                    f"unknown preset {preset!r} for model {self.name!r}; choose one of {sorted(self.presets)}"
                )
            values.update(self.presets[preset])
        values.update(overrides)
        return config_from_dict(self.config_cls, values)


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}


def config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    """Build ``config_cls`` from a dict, rejecting unknown keys and coercing simple types.

    Coercion matters because values arrive as strings from ``--set key=value``.
    """
    known = config_fields(config_cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {config_cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}"
        )
    defaults = config_cls()
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce_value(name, value, getattr(defaults, name))
    return config_cls(**kwargs)


def coerce_value(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` (bool/int/float/str), with a clear error."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value) if not isinstance(value, str) else int(value.strip())
        if isinstance(default, float):
            return float(value)
        if default is None or isinstance(default, str):
            return value
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{name}={value!r} is not a valid {type(default).__name__}"
        ) from exc
    return value
