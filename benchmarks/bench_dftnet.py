"""DFT-Net vs GANimation: generator latency at 128 px and edit sharpness at 1024 px.

Run: ``nice python benchmarks/bench_dftnet.py [--runs 30] [--dftnet FOLDER] [--ganimation FOLDER]``.

1. **Latency.** Generator forward at 128 px, batch 1, ``torch.inference_mode``, median of
   ``--runs`` calls after a warm-up, for the ``paper`` and ``small`` presets of both families
   (random initialisation: weights do not change the cost). Calls are interleaved across the
   models, so load from other processes on a shared CPU hits all of them alike. Multiply-
   accumulates of the convolutions are counted too: they are the machine-independent part of
   the comparison (the paper reports DFT-Net faster, 7.32 vs 12.11 ms on a GTX 1080 Ti).
2. **Sharpness.** Variance of the Laplacian of the grey image inside the face (the inner part
   of the detected face box) for the first ``--portraits`` 1024 px shared portraits, for the
   input, for the pipeline's own resampling floor (align to the working crop and paste its face
   region back unchanged, which every family pays), and for an ``Editor`` edit ("happy",
   intensity 1) with each family. Model folders come from ``--dftnet`` / ``--ganimation``;
   without them the shipped default model is used for GANimation when it is a GANimation (or
   its AdaIN variant), else a random-initialised ``paper`` generator at 128 px, which shows the
   *mechanism* (where the output pixels come from: an upsampled 128 px image, or the warped
   full-resolution crop), not learned quality. For a fair comparison pass two models trained
   the same way.
   The output says which model was used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from facexpr import models
from facexpr.errors import ConfigError


def conv_macs(generator: nn.Module, size: int = 128) -> int:
    """Multiply-accumulates of every (transposed) convolution in one forward at ``size`` px."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        k = int(np.prod(module.kernel_size))
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels * k // module.groups
        else:
            total += output.numel() * module.in_channels * k // module.groups

    handles = [m.register_forward_hook(hook) for m in generator.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode():
        generator(torch.zeros(1, 3, size, size), torch.zeros(1, generator.config.num_aus))
    for h in handles:
        h.remove()
    return total


def latency(runs: int, size: int = 128) -> None:
    print(f"\n== generator latency, {size} px, batch 1, median of {runs} (random init; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores) ==")
    gens: dict[str, nn.Module] = {}
    for preset in ("paper", "small"):
        for name in ("dftnet", "ganimation"):
            family = models.get_family(name)
            torch.manual_seed(0)
            gens[f"{name}/{preset}"] = family.build_generator(family.make_config(preset, image_size=size)).eval()
    x = torch.rand(1, 3, size, size) * 2 - 1
    cond = torch.rand(1, 17)
    times: dict[str, list[float]] = {k: [] for k in gens}
    with torch.inference_mode():
        for g in gens.values():
            for _ in range(3):
                g(x, cond)
        for _ in range(runs):
            for key, g in gens.items():
                t0 = time.perf_counter()
                g(x, cond)
                times[key].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = {k: conv_macs(g, size) for k, g in gens.items()}
    print(f"{'model':<18}{'params M':>10}{'conv GMAC':>11}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}")
    for k, g in gens.items():
        q = np.percentile(times[k], [10, 90])
        print(f"{k:<18}{sum(p.numel() for p in g.parameters()) / 1e6:>10.2f}{macs[k] / 1e9:>11.2f}"
              f"{med[k]:>11.1f}{q[0]:>9.1f}{q[1]:>9.1f}")
    for preset in ("paper", "small"):
        d, g = f"dftnet/{preset}", f"ganimation/{preset}"
        print(f"{preset}: dftnet / ganimation = {med[d] / med[g]:.2f} in time, {macs[d] / macs[g]:.2f} in MACs "
              f"(paper, 1080 Ti: 7.32 / 12.11 = {7.32 / 12.11:.2f})")


def _sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def _model_folder(name: str, given: Path | None, tmp: Path) -> tuple[str, str]:
    """(folder, description) of the model to edit with."""
    if given is not None:
        return str(given), f"{given} (given)"
    if name == "ganimation":
        from facexpr.pipeline.registry import resolve_model

        try:
            info = resolve_model(None)
        except ConfigError:
            info = None
        if info is not None and info.family in ("ganimation", "ganimation-adain"):
            return str(info.path), f"shipped default {info.name!r} ({info.family}, {info.image_size} px)"
    family = models.get_family(name)
    torch.manual_seed(0)
    g = family.build_generator(family.make_config("paper", image_size=128))
    folder = tmp / name
    models.save_pretrained(g, folder)
    return str(folder), "random-init paper generator at 128 px (mechanism only, not learned quality)"


def sharpness(data: Path, n: int, folders: dict[str, Path | None]) -> None:
    from facexpr.face.align import align_face, face_mask, paste_back
    from facexpr.imageio import load_image
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.targets import EmotionTarget

    portraits = sorted((data / "inputs" / "portraits_1024").glob("*"))[:n]
    if not portraits:
        print(f"\n(no portraits under {data}; sharpness skipped)")
        return
    print(f"\n== edit sharpness: variance of the Laplacian inside the face, {len(portraits)} x 1024 px "
          f"portraits, target happy 1.0 ==")
    with tempfile.TemporaryDirectory() as tmp:
        chosen = {name: _model_folder(name, folders.get(name), Path(tmp)) for name in ("ganimation", "dftnet")}
        for name, (_, desc) in chosen.items():
            print(f"{name}: {desc}")
        editors = {name: Editor.from_pretrained(folder, backend="torch") for name, (folder, _) in chosen.items()}
        rows = []
        try:
            for path in portraits:
                img = load_image(path).rgb
                faces = editors["dftnet"].faces(img)
                if not faces:
                    continue
                face = faces[0]
                x0, y0, x1, y1 = face.box
                inner = (slice(int(y0 + 0.2 * (y1 - y0)), int(y1 - 0.1 * (y1 - y0))),
                         slice(int(x0 + 0.15 * (x1 - x0)), int(x1 - 0.15 * (x1 - x0))))
                row = {"photo": path.name, "input": _sharpness(img[inner])}
                for name, ed in editors.items():
                    res = ed.edit_faces(img, [face], [EmotionTarget("happy", 1.0)])
                    f = res.faces[0]
                    row[name] = _sharpness(res.image[inner])
                    share = float(1 - f.attention.mean()) if f.attention is not None else float("nan")
                    row[f"{name} texture share"] = share
                    work = f.work_size
                aligned = align_face(img, face.landmarks, work)
                region = face_mask(aligned.landmarks, work).astype(np.float32)
                row["floor"] = _sharpness(paste_back(img, aligned.crop, aligned.matrix, region)[inner])
                rows.append(row)
        finally:
            for ed in editors.values():
                ed.close()
    cols = ["input", "floor", "ganimation", "dftnet"]
    print(f"{'photo':<26}" + "".join(f"{c:>12}" for c in cols) + f"{'1-A gan':>9}{'1-A dft':>9}")
    for r in rows:
        print(f"{r['photo']:<26}" + "".join(f"{r[c]:>12.1f}" for c in cols)
              + f"{r['ganimation texture share']:>9.2f}{r['dftnet texture share']:>9.2f}")
    for c in cols[1:]:
        ratio = statistics.median(r[c] / r["input"] for r in rows)
        print(f"median {c} / input = {ratio:.2f}")
    print("(floor = align to the working crop and paste its face region back unchanged: the resampling every "
          "family pays; "
          "1-A = mean share of the model-size crop drawn from the colour/texture image)")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("FACEXPR_SHARED_DATA", here.parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--runs", type=int, default=30, help="timed forwards per model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--portraits", type=int, default=4, help="1024 px portraits to edit")
    ap.add_argument("--dftnet", type=Path, default=None, help="dftnet model folder for the sharpness part")
    ap.add_argument("--ganimation", type=Path, default=None, help="ganimation model folder for the sharpness part")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-sharpness", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_latency:
        latency(args.runs)
    if not args.skip_sharpness:
        if not (args.data / "README.md").exists():
            raise SystemExit(f"shared data not found at {args.data}; pass --data")
        sharpness(args.data, args.portraits, {"dftnet": args.dftnet, "ganimation": args.ganimation})


if __name__ == "__main__":
    main()
