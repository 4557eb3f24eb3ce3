"""Which found faces can be edited, and, for the others, why not.

The detector returns every face it finds, but some cannot be edited well: the far half of a face
turned beyond ~45 degrees is hidden, so the mesh warp would fold it; a face under 40 px has too
few pixels for the rig's motion (a smile moves the mouth corners by one or two pixels) and its
landmarks are too coarse; a face cut by the photo's edge has landmarks MediaPipe guessed outside
the photo, and a warp anchored on them smears the edge. Editing them would give "a fold, a smear
or a silent wrong"; refusing them with a reason lets the user see what happened while every
other face is still edited. The editor (``Editor.edit_array``), ``facexpr analyze`` and the web
page all ask :func:`refusal`, so they agree on which faces are refused and why.
"""

from __future__ import annotations

from facexpr.face.detect import Face

#: Smallest face (px, geometric mean of the landmark box) that is edited.
MIN_EDIT_FACE = 40.0
#: Largest head turn (|yaw|, degrees) that is edited.
MAX_EDIT_YAW = 45.0
#: Largest share of a face's landmark box that may lie outside the photo (a chin or an ear
#: touching the edge is fine; a face cut through the cheek is not).
MAX_OUTSIDE = 0.05


def outside_fraction(face: Face, width: int, height: int) -> float:
    """Share (0..1) of the face's landmark box that lies outside a ``width`` x ``height`` photo."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    area = max((x1 - x0) * (y1 - y0), 1e-6)
    ix = max(0.0, min(x1, width - 0.5) - max(x0, -0.5))
    iy = max(0.0, min(y1, height - 0.5) - max(y0, -0.5))
    return float(min(max(1.0 - ix * iy / area, 0.0), 1.0))


def refusal(face: Face, width: int, height: int) -> str | None:
    """Why ``face`` (found in a ``width`` x ``height`` photo) will not be edited, or None.

    The reason reads after "face N ", e.g. "is turned too far to edit (yaw 62°; at most 45°)".
    Checks run in this order: too small, cut by the edge, turned too far (a tiny face's pose and
    a cut face's landmarks are unreliable, so their size or cut is the reason to give).
    """
    if face.size < MIN_EDIT_FACE:
        return (f"is too small to edit ({face.size:.0f} px; at least {MIN_EDIT_FACE:.0f} px: use a larger "
                f"or closer photo of it)")
    out = outside_fraction(face, width, height)
    if out > MAX_OUTSIDE:
        return (f"is cut by the photo's edge ({100 * out:.0f} % of it is outside the photo; "
                f"use a photo that shows the whole face)")
    yaw = face.yaw_pitch_roll()[0]
    if abs(yaw) > MAX_EDIT_YAW:
        return f"is turned too far to edit (yaw {abs(yaw):.0f}°; at most {MAX_EDIT_YAW:.0f}°)"
    return None


def refusals(faces: list[Face], width: int, height: int) -> dict[int, str]:
    """``{index: "face N is ..."}`` for every face of ``faces`` that will not be edited."""
    out: dict[int, str] = {}
    for i, face in enumerate(faces):
        why = refusal(face, width, height)
        if why is not None:
            out[i] = f"face {i} {why}"
    return out
