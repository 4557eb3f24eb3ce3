"""``facexpr analyze``: what the face pipeline sees in a photo.

Useful before an edit (is every face found? how turned is it?) and for debugging a dataset
(``--save-crops`` writes the exact aligned crops that ``prepare`` would produce).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from facexpr.errors import FacexprError


def _aus_function() -> Any:
    """The AU estimator if its module is available (it is optional for this command)."""
    try:
        from facexpr.expression import AU_NAMES
        from facexpr.face.aus import aus_from_blendshapes
    except ImportError:
        return None
    return lambda bs, lm: dict(zip(AU_NAMES, (float(v) for v in aus_from_blendshapes(bs, lm))))


@click.command("analyze")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--save-crops", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each face's aligned crop as DIR/<photo>_face<i>.png.")
@click.option("--size", type=click.IntRange(16, 2048), default=256, show_default=True,
              help="Side of the aligned crops in pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@click.option("--landmarks", "with_landmarks", is_flag=True,
              help="Include the 478 landmarks in the JSON output.")
@click.option("--fallback", type=click.Choice(["hog", "cnn", "hog+cnn", "none"]), default="hog",
              show_default=True,
              help="Extra dlib detector for faces the landmarker misses. A photo whose long side is over "
                   "300 px is always searched by the small-face detector, which finds what HOG would there: "
                   "hog runs only on smaller photos in which no face was found; cnn (1-3 s a photo) runs on "
                   "every photo, besides the small-face detector; none: neither.")
@click.option("--max-faces", type=click.IntRange(1, 100), default=64, show_default=True)
def analyze(
    photos: tuple[Path, ...],
    save_crops: Path | None,
    size: int,
    as_json: bool,
    with_landmarks: bool,
    fallback: str,
    max_faces: int,
) -> None:
    """Detect faces in PHOTOS and print box, size, pose and Action Units of each.

    The faces and their numbers are those `facexpr edit` sees (same detector settings by
    default); a face `facexpr edit` would leave as it is (under 40 px, cut by the photo's edge,
    turned beyond 45 degrees) says why.
    """
    from facexpr.face.align import align_face
    from facexpr.face.detect import FaceAnalyzer, check_searchable
    from facexpr.face.limits import refusals
    from facexpr.imageio import load_image, save_image

    au_fn = _aus_function()
    if save_crops is not None:
        try:
            save_crops.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FacexprError(f"{save_crops}: cannot create the crops folder ({exc})") from exc
    report: list[dict[str, Any]] = []
    written: set[Path] = set()
    failed = 0
    with FaceAnalyzer(max_faces=max_faces, fallback=fallback) as analyzer:  # type: ignore[arg-type]
        for photo in photos:
            try:
                image = load_image(photo)
                check_searchable(image.width, image.height)
            except FacexprError as exc:
                failed += 1
                if as_json:
                    report.append({"file": str(photo), "error": str(exc)})
                else:
                    click.echo(f"{photo}: error: {exc}", err=True)
                continue
            if image.frames > 1:
                click.echo(f"{photo}: note: {image.frames} frames (animated); only the first is analysed", err=True)
            faces = analyzer.analyze(image.rgb)
            entry: dict[str, Any] = {
                "file": str(photo), "width": image.width, "height": image.height, "faces": [],
            }
            refused = refusals(faces, image.width, image.height)
            if not as_json:
                note = f", {len(refused)} would not be edited" if refused else ""
                click.echo(f"{photo}: {image.width}x{image.height}, {len(faces)} face(s){note}")
            for i, face in enumerate(faces):
                yaw, pitch, roll = face.yaw_pitch_roll()
                item: dict[str, Any] = {
                    "index": i,
                    "box": [round(float(v), 1) for v in face.box],
                    "size": round(face.size, 1),
                    "yaw": round(yaw, 1), "pitch": round(pitch, 1), "roll": round(roll, 1),
                    "found_by": face.source,
                    "editable": i not in refused,
                }
                if i in refused:
                    item["refused"] = refused[i]
                if au_fn is not None:
                    item["aus"] = {k: round(v, 2) for k, v in au_fn(face.blendshapes, face.landmarks).items()}
                if with_landmarks:
                    item["landmarks"] = np.round(face.landmarks, 2).tolist()
                if save_crops is not None:
                    crop_path = save_crops / f"{photo.stem}_face{i}.png"
                    if crop_path in written:  # same file name in two folders
                        crop_path = save_crops / f"{photo.stem}_{len(report)}_face{i}.png"
                    written.add(crop_path)
                    save_image(crop_path, align_face(image.rgb, face.landmarks, size).crop)
                    item["crop"] = str(crop_path)
                entry["faces"].append(item)
                if not as_json:
                    x0, y0, x1, y1 = item["box"]
                    click.echo(
                        f"  face {i}: box ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}), size {face.size:.0f} px, "
                        f"yaw {yaw:+.0f} pitch {pitch:+.0f} roll {roll:+.0f} deg"
                        + (f", found by {face.source}" if face.source != "landmarker" else "")
                    )
                    if i in refused:
                        click.echo(f"    not editable: {refused[i]}")
                    if "aus" in item:
                        active = [f"{k}={v:.1f}" for k, v in item["aus"].items() if v >= 0.5]
                        click.echo("    AUs: " + (" ".join(active) if active else "none above 0.5"))
                    if "crop" in item:
                        click.echo(f"    crop: {item['crop']}")
            report.append(entry)
    if as_json:
        click.echo(json.dumps(report if len(photos) > 1 else report[0], indent=2))
    if failed == len(photos):
        raise FacexprError("no photo could be analysed (see the messages above)")
    if failed:
        click.echo(f"{failed} of {len(photos)} photos could not be analysed", err=True)
        raise SystemExit(1)
