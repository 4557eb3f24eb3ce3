"""How much of a JPEG photo outside the edited face changes when the edit is saved.

    python benchmarks/bench_jpeg_keep.py [--square 300] [--delta 20] [--margin 16] [--limit N] [--variants]

Simulates an edit on every shared 1024 px portrait and on misc/single_face.jpg and
misc/multi_face.jpg: +DELTA grey levels on a SQUARE x SQUARE block in the middle of the decoded
photo. Each edit is saved twice through ``facexpr.imageio.save_image``: "old" with the defaults
(quality 95, 4:4:4, what ``facexpr edit`` wrote before) and "new" with ``like=`` the loaded source
(its tables, subsampling and decoded planes). Both files are decoded again and compared with the
decoded input outside the square grown by MARGIN px (chroma upsampling reaches a few pixels past
an edit; a 4:2:0 MCU is 16 px). Prints, per photo set, the share of those pixels whose largest
channel difference is > 2 levels (mean / median / max over photos, and how many photos reach
0.5 %), the share that differ at all, file sizes (source / old / new) and seconds per save.

``--variants`` also re-encodes multi_face.jpg (cropped to whole MCUs, or one pixel more) as
sources the shared set lacks: 4:2:2, EXIF orientations 3/6 on grids that do or do not survive the
turn. Besides old and new it shows "tables" (the source's tables and subsampling on the RGB
pixels, without its decoded planes) and, for 4:2:2 turned by 90 degrees (4:4:0, which Pillow
cannot write), 4:4:4 with the source's own chroma table. Reads ../shared/data in place; exits 0
with a message when it is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facexpr.imageio import load_image, save_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET = 0.005  # share of pixels outside the edit allowed to change by > 2 levels


def simulate_edit(rgb: np.ndarray, square: int, delta: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(edited copy, mask of the pixels outside the square grown by ``margin``)."""
    h, w = rgb.shape[:2]
    s = min(square, h // 2, w // 2)
    y0, x0 = (h - s) // 2, (w - s) // 2
    edited = rgb.copy()
    block = edited[y0:y0 + s, x0:x0 + s].astype(np.int16) + delta
    edited[y0:y0 + s, x0:x0 + s] = np.clip(block, 0, 255).astype(np.uint8)
    outside = np.ones((h, w), bool)
    outside[max(0, y0 - margin):y0 + s + margin, max(0, x0 - margin):x0 + s + margin] = False
    return edited, outside


def measure(path: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    loaded = load_image(path)
    edited, outside = simulate_edit(loaded.rgb, args.square, args.delta, args.margin)
    row: dict[str, float] = {"source_kb": path.stat().st_size / 1024}
    for name, like in (("old", None), ("new", loaded)):
        out = tmp / f"{name}.jpg"
        t0 = time.perf_counter()
        save_image(out, edited, like=like)
        row[f"{name}_s"] = time.perf_counter() - t0
        back = load_image(out).rgb.astype(np.int16)
        diff = np.abs(back - loaded.rgb).max(axis=2)
        row[f"{name}_gt2"] = float((diff[outside] > 2).mean())
        row[f"{name}_any"] = float((diff[outside] > 0).mean())
        row[f"{name}_kb"] = out.stat().st_size / 1024
    return row


def _exif_orientation(orientation: int) -> bytes:
    """A minimal little-endian EXIF block carrying only ``orientation``."""
    import struct

    return (b"Exif\x00\x00II" + struct.pack("<HIH", 42, 8, 1)
            + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0))


def variants(photo: Path, tmp: Path, args: argparse.Namespace) -> None:
    """Sources the shared set lacks, encoded from real content; old / tables / new per variant."""
    content = load_image(photo).rgb
    h16, w16 = content.shape[0] // 16 * 16, content.shape[1] // 16 * 16
    cases = [  # label, subsampling, quality, orientation, (h, w)
        ("4:2:0 q92", 2, 92, 1, (h16, w16)),
        ("4:2:2 q80", 1, 80, 1, (h16, w16)),
        ("4:2:2 q92", 1, 92, 1, (h16, w16)),
        ("4:4:4 q90", 0, 90, 1, (h16, w16)),
        ("4:2:0 q90 orient 6, whole MCUs", 2, 90, 6, (h16, w16)),
        ("4:2:0 q90 orient 6, +1 px", 2, 90, 6, (h16 - 15, w16 - 15)),
        ("4:2:0 q90 orient 3, +1 px", 2, 90, 3, (h16 - 15, w16 - 15)),
        ("4:2:2 q92 orient 6 (-> 4:4:0)", 1, 92, 6, (h16, w16)),
    ]
    print(f"\nvariants encoded from {photo.name} (>2 levels outside the edit / any change / KiB)")
    for label, sub, q, orientation, (h, w) in cases:
        src = tmp / "variant.jpg"
        Image.fromarray(content[:h, :w]).save(src, quality=q, subsampling=sub, exif=_exif_orientation(orientation))
        loaded = load_image(src)
        edited, outside = simulate_edit(loaded.rgb, args.square, args.delta, args.margin)
        enc = loaded.encoding
        assert enc is not None and enc.qtables is not None
        writers = {
            "old": lambda out: save_image(out, edited),
            "new": lambda out: save_image(out, edited, like=loaded),
        }
        if enc.subsampling in (0, 1, 2):
            writers["tables"] = lambda out: Image.fromarray(edited).save(
                out, qtables=[list(t) for t in enc.qtables], subsampling=enc.subsampling, optimize=True)
        else:
            writers["4:4:4 source chroma table"] = lambda out: Image.fromarray(edited).save(
                out, qtables=[list(t) for t in enc.qtables], subsampling=0, optimize=True)
        cells = []
        for name, write in writers.items():
            out = tmp / "out.jpg"
            write(out)
            diff = np.abs(load_image(out).rgb.astype(np.int16) - loaded.rgb).max(axis=2)[outside]
            cells.append(f"{name} {(diff > 2).mean() * 100:.3f}% / {(diff > 0).mean() * 100:.1f}% / "
                         f"{out.stat().st_size / 1024:.0f}")
        print(f"  {label:<31} source {src.stat().st_size / 1024:.0f} KiB | " + " | ".join(cells))


def summarise(label: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{label}: {len(rows)} photo(s)")
    print(f"  {'writer':<6} {'>2 levels: mean':>16} {'median':>8} {'max':>8} {'>=0.5%':>7} "
          f"{'any change':>11} {'size KiB':>9} {'s/save':>7}")
    for name in ("old", "new"):
        gt2 = [r[f"{name}_gt2"] * 100 for r in rows]
        anyc = statistics.mean(r[f"{name}_any"] for r in rows) * 100
        over = sum(g >= TARGET * 100 for g in gt2)
        print(f"  {name:<6} {statistics.mean(gt2):>15.3f}% {statistics.median(gt2):>7.3f}% "
              f"{max(gt2):>7.3f}% {over:>7d} {anyc:>10.3f}% "
              f"{statistics.mean(r[f'{name}_kb'] for r in rows):>9.1f} "
              f"{statistics.median(r[f'{name}_s'] for r in rows):>7.3f}")
    print(f"  source mean size {statistics.mean(r['source_kb'] for r in rows):.1f} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--square", type=int, default=300, help="edited square side in px")
    ap.add_argument("--delta", type=int, default=20, help="grey levels added inside the square")
    ap.add_argument("--margin", type=int, default=16, help="px the square is grown by before measuring")
    ap.add_argument("--limit", type=int, default=0, help="portraits to use (0 = all)")
    ap.add_argument("--variants", action="store_true",
                    help="also measure 4:2:2 and EXIF-rotated sources encoded from multi_face.jpg")
    args = ap.parse_args()
    portraits = sorted((SHARED / "inputs" / "portraits_1024").glob("*.jpg"))
    misc = [SHARED / "inputs" / "misc" / n for n in ("single_face.jpg", "multi_face.jpg")]
    misc = [p for p in misc if p.exists()]
    if not portraits and not misc:
        print(f"shared data not found at {SHARED}; nothing to measure")
        return 0
    if args.limit:
        portraits = portraits[: args.limit]
    print(f"edit: +{args.delta} on a {args.square} px square in the middle; measured outside it grown by "
          f"{args.margin} px; old = quality 95 4:4:4 defaults, new = save_image(like=source)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, files in (("portraits_1024", portraits), ("misc", misc)):
            if not files:
                continue
            rows = []
            for path in files:
                row = measure(path, tmp, args)
                rows.append(row)
                if label == "misc":
                    print(f"  {path.name}: old {row['old_gt2'] * 100:.3f}% ({row['old_kb']:.0f} KiB), "
                          f"new {row['new_gt2'] * 100:.3f}% ({row['new_kb']:.0f} KiB), "
                          f"source {row['source_kb']:.0f} KiB")
            summarise(label, rows)
        if args.variants and misc:
            variants(misc[-1], tmp, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
