"""Judge accuracy on real labelled photos, and the speed of the evaluation's parts.

Not a test: it reads whole prepared datasets and takes minutes on 2 CPU cores.

    python benchmarks/bench_eval.py judge PREPARED [PREPARED ...] [--judge fer|PATH] [--sweep]
    python benchmarks/bench_eval.py speed [--n 16]

``judge`` prints, per dataset, the judge's accuracy per class on *all* its labelled crops (the
numbers in docs/judge.md), its confusion matrix, and with ``--sweep`` the accuracy for other crop
framings (how the shipped ``crop_fraction`` / ``crop_center_y`` were chosen).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import numpy as np


def _labelled(dataset, judge):  # type: ignore[no-untyped-def]
    from facexpr.expression import resolve_emotion
    from facexpr.errors import ConfigError

    rows, classes = [], []
    for i, e in enumerate(dataset.expressions):
        if not e:
            continue
        try:
            k = judge.class_index(resolve_emotion(e))
        except ConfigError:
            k = None
        if k is not None:
            rows.append(i)
            classes.append(k)
    return np.array(rows), np.array(classes)


def judge_accuracy(paths: list[str], judge_spec: str, sweep: bool) -> None:
    from facexpr.data.dataset import PreparedDataset
    from facexpr.evaluation import metrics as M
    from facexpr.evaluation.judge import ExpressionJudge

    judge = ExpressionJudge.from_pretrained(judge_spec)
    names = judge.class_names
    for path in paths:
        ds = PreparedDataset(path)
        rows, y = _labelled(ds, judge)
        imgs = np.concatenate([ds.images(rows[s : s + 256]) for s in range(0, len(rows), 256)])
        skipped = sum(1 for e in ds.expressions if e) - len(rows)
        pred = judge.predict(imgs)
        per = M.per_class_rate(pred, y, names)
        overall = M.generation_rate(pred, y)
        present = [s.value for s in per.values() if s.count]
        print(f"\n## {ds.meta.get('name', path)} ({ds.size} px crops, judge {judge.name})\n")
        print(f"{len(rows)} labelled crops ({skipped} with a label the judge lacks left out); "
              f"accuracy {100 * overall.value:.1f}%, mean per class {100 * np.mean(present):.1f}%\n")
        print("| class | n | accuracy | most often called |")
        print("|---|---|---|---|")
        cm = M.confusion_matrix(pred, y, len(names))
        for k, c in enumerate(names):
            if not per[c].count:
                continue
            row = cm[k].copy()
            row[k] = -1
            other = names[int(row.argmax())] if row.max() > 0 else "—"
            print(f"| {c} | {per[c].count} | {100 * per[c].value:.1f}% | {other} ({row.max()}) |")
        print("\nconfusion (rows true, columns judged: " + ", ".join(names) + ")")
        for k, c in enumerate(names):
            if cm[k].sum():
                print(f"  {c:>10s} " + " ".join(f"{v:5d}" for v in cm[k]))
        if sweep:
            base = judge.config
            print("\n| crop_fraction | crop_center_y | accuracy | mean per class |\n|---|---|---|---|")
            for fr, cy in itertools.product((0.7, 0.8, 0.85, 0.9, 0.95, 1.0), (0.5, 0.55)):
                judge.config = dataclasses.replace(base, crop_fraction=fr, crop_center_y=cy)
                p = judge.predict(imgs)
                pc = [s.value for s in M.per_class_rate(p, y, names).values() if s.count]
                print(f"| {fr} | {cy} | {100 * (p == y).mean():.1f}% | {100 * np.mean(pc):.1f}% |")
            judge.config = base


def speed(n: int) -> None:
    import torch

    from facexpr.evaluation import metrics as M
    from facexpr.evaluation.fid import FIDInceptionV3, fid_from_features
    from facexpr.evaluation.judge import ExpressionJudge

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    judge = ExpressionJudge.from_pretrained("fer")

    def timed(label: str, fn, count: int) -> None:  # type: ignore[no-untyped-def]
        fn()
        t = time.perf_counter()
        fn()
        print(f"{label:40s} {1000 * (time.perf_counter() - t) / count:8.2f} ms/image")

    timed("judge (64x64 mini-Xception)", lambda: judge.predict_proba(imgs), n)
    timed("SSIM 128x128x3", lambda: [M.ssim(imgs[0], imgs[1]) for _ in range(n)], n)
    net = FIDInceptionV3().eval()
    x = torch.from_numpy(imgs[:8]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        timed("Inception-v3 FID features (299 px)", lambda: net(x), 8)
    f1, f2 = rng.normal(size=(500, 2048)), rng.normal(size=(500, 2048))
    t = time.perf_counter()
    fid_from_features(f1, f2)
    print(f"{'FID 500 vs 500 x 2048 (one number)':40s} {1000 * (time.perf_counter() - t):8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judge")
    j.add_argument("prepared", nargs="+")
    j.add_argument("--judge", default="fer")
    j.add_argument("--sweep", action="store_true")
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    if a.cmd == "judge":
        judge_accuracy(a.prepared, a.judge, a.sweep)
    else:
        speed(a.n)


if __name__ == "__main__":
    main()
