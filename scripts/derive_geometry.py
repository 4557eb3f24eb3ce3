"""Write a geometry model folder from an existing one with today's settings, without refitting.

``geometry-v2`` was made this way from ``geometry-v1``: the same fitted rig and shading (a refit
on the same data gives the same numbers), each AU's motion re-registered to the bone
(:func:`facexpr.models.geometry.register_to_bone`), the AUs the landmarker cannot observe composed from
their FACS parts (:func:`facexpr.models.geometry.compose_unobserved`), and
:data:`facexpr.models.geometry.RECOMMENDED` settings; the mouth is drawn, so no mouth network.

Usage: python scripts/derive_geometry.py SRC_FOLDER OUT_FOLDER CARD.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from facexpr.models.geometry import (
    ExpressionRig,
    GeometryModel,
    ShadingLayer,
    compose_unobserved,
    recommended_config,
    register_to_bone,
)


def main() -> None:
    src, out, card = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    old = GeometryModel.from_pretrained(src)
    rig = ExpressionRig(compose_unobserved(register_to_bone(old.rig.basis)))
    shading = ShadingLayer(compose_unobserved(old.shading.ratios)) if old.shading is not None else None
    config = recommended_config(grid_cells=old.config.grid_cells, texture_size=old.config.texture_size)
    training = dict(old.info.get("training", {}))
    training["derived_from"] = src.name
    model = GeometryModel(config, rig, shading, None, {})
    model.save_pretrained(out, model_card=card.read_text(encoding="utf-8"), training=training, overwrite=out.exists())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
