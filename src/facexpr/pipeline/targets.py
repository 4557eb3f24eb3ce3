"""What a user asks a face to look like, turned into a 17-AU target vector per face.

Three kinds of target, one small frozen dataclass each, so a batch or a web request can carry
them around and print them:

- :class:`EmotionTarget` - an emotion prototype at an intensity, *relative to the face's own
  expression* (intensity 0 leaves the face as it is);
- :class:`AUTarget` - explicit Action Units, absolute (``AU12=3.5``) or deltas (``AU12+=1``);
- :class:`ReferenceTarget` - the AUs of another face (``--like ref.jpg``), estimated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from facexpr.errors import ConfigError
from facexpr.models.base import Condition
from facexpr.expression import AU_NAMES, AUSpec, apply_au_specs, emotion_aus, parse_au, resolve_emotion


@dataclass(frozen=True)
class EmotionTarget:
    name: str
    intensity: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", resolve_emotion(self.name))
        if not 0.0 <= float(self.intensity) <= 1.0:
            raise ConfigError(f"intensity must be between 0 and 1, got {self.intensity}")

    def aus_for(self, source_aus: np.ndarray) -> np.ndarray:
        return emotion_aus(self.name, float(self.intensity), source_aus)

    def __str__(self) -> str:
        return f"{self.name} @ {self.intensity:g}"


@dataclass(frozen=True)
class AUTarget:
    specs: tuple[AUSpec, ...]

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> AUTarget:
        if not specs:
            raise ConfigError("no Action Units given; use e.g. AU12=3.5 or AU4+=1")
        return cls(tuple(parse_au(s) for s in specs))

    def aus_for(self, source_aus: np.ndarray) -> np.ndarray:
        return apply_au_specs(source_aus, self.specs)

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.specs)


@dataclass(frozen=True)
class ReferenceTarget:
    """The expression of a reference face, as absolute AUs; the photo and its face landmarks
    ride along for models that copy a look rather than AUs (neural style transfer)."""

    aus: np.ndarray = field(repr=False)
    label: str = "reference"
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.aus, dtype=np.float32).reshape(-1)
        if a.shape != (len(AU_NAMES),):
            raise ConfigError(f"a reference target needs {len(AU_NAMES)} AUs, got {a.shape}")
        object.__setattr__(self, "aus", a)

    def aus_for(self, source_aus: np.ndarray) -> np.ndarray:
        return self.aus.copy()

    def __str__(self) -> str:
        return f"like {self.label}"


Target = Union[EmotionTarget, AUTarget, ReferenceTarget]


def label_values(target: Target | np.ndarray, condition: Condition, model: str) -> np.ndarray:
    """The one-hot row a label-conditioned model (StarGAN, CycleGAN, ...) is asked for.

    Only an emotion can be asked of such a model; an intensity below 1 only where the family
    can interpolate its condition. Everything else is refused with what to do instead.
    """
    if not isinstance(target, EmotionTarget):
        raise ConfigError(f"model {model} is conditioned on expression labels ({', '.join(condition.labels)}), "
                          "not on Action Units: ask it for an emotion (--emotion), or use an AU-conditioned model "
                          "(the default geometry model, ganimation, dftnet) for --au, --like and animations")
    if float(target.intensity) != 1.0 and not condition.interpolates:
        raise ConfigError(f"model {model} renders one expression label at a time and cannot interpolate it: "
                          f"--intensity {target.intensity:g} is not possible; leave --intensity at 1 or use an "
                          "AU-conditioned model")
    one_hot = np.asarray(condition.one_hot(target.name), np.float32)
    return one_hot * np.float32(target.intensity) if condition.interpolates else one_hot
