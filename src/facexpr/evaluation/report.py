"""Human-readable outputs of an evaluation: Markdown tables, plots, sample grids, comparisons.

Reads only the ``metrics.json`` structure written by :mod:`facexpr.evaluation.evaluate` (plus the
arrays it is handed), so a comparison can be rebuilt from finished evaluation folders alone.
Every realism number is printed with its metric's name, so a face-embedding proxy can never be
mistaken for FID.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facexpr.errors import ConfigError, FacexprError


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _v(stat: dict[str, Any] | None, key: str = "value") -> float | None:
    if not stat:
        return None
    return stat.get(key)


def fmt(value: float | None, digits: int = 3, percent: bool = False) -> str:
    """A number for a table; '—' when missing (NaN, no data)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if percent:
        return f"{100.0 * value:.1f}%"
    return f"{value:.{digits}f}"


def _stat_cell(stat: dict[str, Any] | None, digits: int = 3, percent: bool = False) -> tuple[str, str]:
    if not stat:
        return "—", "0"
    return fmt(stat.get("value"), digits, percent), str(stat.get("count", 0))


# --------------------------------------------------------------------------------------------
# One evaluation
# --------------------------------------------------------------------------------------------


def realism_line(m: dict[str, Any]) -> tuple[str, float | None]:
    """(label, value) of the realism number to show: real FID when computed, else the proxy."""
    r = m.get("realism") or {}
    f = r.get("fid") or {}
    if f.get("fid") is not None:
        return "FID", f["fid"]
    p = r.get("proxy") or {}
    if p.get("fid") is not None:
        return p.get("name", "FID-proxy"), p["fid"]
    return "FID", None


def report_markdown(m: dict[str, Any]) -> str:
    """The ``report.md`` text of one evaluation."""
    model, ds, judge = m["model"], m["dataset"], m["judge"]
    ex = m["expression"]
    lines = [
        f"# Evaluation of `{model['name']}` ({model['family']})",
        "",
        f"- dataset: `{ds['root']}` — {ds['evaluated_faces']} of {ds['validation_faces']} validation faces "
        f"(identity-disjoint split), {m['counts']['targets_per_face']} targets each, "
        f"{m['counts']['edits']} edits at {m['evaluated_at_size']} px",
        f"- targets: `{m['config']['targets']}` (intensity {m['config']['intensity']})",
        f"- judge: **{judge['name']}** ({', '.join(judge['classes'])})",
        "",
        "| metric | value | n |",
        "|---|---|---|",
    ]

    def row(name: str, stat: dict[str, Any] | None, digits: int = 3, percent: bool = False) -> None:
        v, n = _stat_cell(stat, digits, percent)
        lines.append(f"| {name} | {v} | {n} |")

    row("expression generation rate (judge)", ex["generation_rate"], percent=True)
    row("judge accuracy on real validation photos", ex["real_accuracy"]["overall"], percent=True)
    row("generation rate / real accuracy", ex["ratio"], digits=2)
    row("mean judge probability of the target", ex["mean_target_probability"])
    if "aus" in m:
        row("AU error (MAE, 0..5 scale)", m["aus"]["error"]["mean"])
        row("AU error if nothing were edited", m["aus"]["no_edit_error"]["mean"])
    if "identity" in m:
        row("identity distance (dlib, input vs output)", m["identity"]["distance"])
        row(f"verification rate (distance < {m['identity']['threshold']})", m["identity"]["verification_rate"], percent=True)
    if "fidelity" in m:
        row("sharpness inside the face (edit / input)", m["fidelity"]["sharpness_ratio"])
        row("pixels changed outside the face (> 2 levels)", m["fidelity"]["changed_outside_face"], percent=True)
    if "cycle" in m:
        row("cycle PSNR (dB)", m["cycle"]["psnr"], digits=2)
        row("cycle SSIM", m["cycle"]["ssim"])
    if "paired" in m:
        row("paired ground truth: identity distance", m["paired"]["identity_distance"])
        row("paired ground truth: PSNR (dB)", m["paired"]["psnr"], digits=2)
        row("paired ground truth: SSIM", m["paired"]["ssim"])
    if "realism" in m:
        f = m["realism"].get("fid") or {}
        if f.get("fid") is not None:
            lines.append(f"| {f['name']} | {fmt(f['fid'], 2)} | {f['n_fake']} |")
            lines.append(f"| KID x1000 | {fmt(1000 * f['kid'], 2)} ± {fmt(1000 * f['kid_std'], 2)} | {f['n_fake']} |")
        else:
            lines.append(f"| {f.get('name', 'FID')} | not computed: {f.get('reason', '')} | 0 |")
        p = m["realism"].get("proxy") or {}
        if p.get("fid") is not None:
            lines.append(f"| **{p['name']}** (not FID) | {fmt(p['fid'], 4)} | {p['n_fake']} |")
            lines.append(f"| {p['kid_name']} x1000 | {fmt(1000 * p['kid'], 3)} ± {fmt(1000 * p['kid_std'], 3)} | {p['n_fake']} |")
    sp = m.get("speed") or {}
    lines.append(f"| generator time per image (ms, {sp.get('device', '?')}) | {fmt(sp.get('ms_per_image'), 1)} | {sp.get('images', 0)} |")

    if ex["per_emotion"]:
        lines += ["", "## Per emotion", "", "| emotion | generation rate | n | judge accuracy on real | n | ratio |",
                  "|---|---|---|---|---|---|"]
        for name, e in ex["per_emotion"].items():
            g, gn = _stat_cell(e["generation_rate"], percent=True)
            r, rn = _stat_cell(e["real_accuracy"], percent=True)
            lines.append(f"| {name} | {g} | {gn} | {r} | {rn} | {fmt(_v(e['ratio']), 2)} |")
    lines += ["", "## Per target", "", "| target | n | generation rate | AU error | identity distance | verification |",
              "|---|---|---|---|---|---|"]
    for name, t in m["per_target"].items():
        lines.append(
            f"| {name} | {t['count']} | {fmt(_v(t['generation_rate']), percent=True)} | {fmt(_v(t['au_error']))} | "
            f"{fmt(_v(t['identity_distance']))} | {fmt(_v(t['verification_rate']), percent=True)} |"
        )
    if "aus" in m:
        lines += ["", "## Per Action Unit (MAE between target and re-estimated AUs)", "",
                  "| AU | error | no-edit error | n |", "|---|---|---|---|"]
        for au, s in m["aus"]["error"].items():
            if au == "mean":
                continue
            lines.append(f"| {au} | {fmt(_v(s))} | {fmt(_v(m['aus']['no_edit_error'].get(au)))} | {s.get('count', 0)} |")
    lines += ["", "Plots: `identity_distance.png`, `per_emotion.png`, `au_error.png`; samples: `samples.png`; "
              "one row per edit: `samples.csv`.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(report_markdown(metrics), encoding="utf-8")
    return path


def plot_identity_histogram(path: Path, distances: np.ndarray, title: str = "", threshold: float = 0.6) -> None:
    plt = _mpl()
    d = np.asarray(distances, np.float64)
    d = d[np.isfinite(d)]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if d.size:
        ax.hist(d, bins=min(40, max(5, d.size // 4)), color="#4878a8", edgecolor="white")
    ax.axvline(threshold, color="#c03030", linestyle="--", label=f"same-person threshold {threshold}")
    ax.set_xlabel("dlib identity distance, input vs output")
    ax.set_ylabel("edits")
    ax.set_title(f"{title} (n={d.size})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_emotion(path: Path, metrics: dict[str, Any]) -> None:
    plt = _mpl()
    pe = metrics["expression"]["per_emotion"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    names = list(pe)
    if names:
        x = np.arange(len(names))
        gen = [(_v(pe[n]["generation_rate"]) or 0.0) * 100 for n in names]
        real = [(_v(pe[n]["real_accuracy"]) or 0.0) * 100 for n in names]
        ax.bar(x - 0.2, gen, 0.4, label="generated: judged as target", color="#4878a8")
        ax.bar(x + 0.2, real, 0.4, label="real photos: judge accuracy", color="#a0a0a0")
        ax.set_xticks(x, names)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no emotion targets", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"per emotion — judge: {metrics['judge']['name']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_au_error(path: Path, metrics: dict[str, Any]) -> None:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    if "aus" in metrics:
        err = {k: v for k, v in metrics["aus"]["error"].items() if k != "mean"}
        base = metrics["aus"]["no_edit_error"]
        names = list(err)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [_v(err[n]) or 0.0 for n in names], 0.4, label="output vs target", color="#4878a8")
        ax.bar(x + 0.2, [_v(base.get(n)) or 0.0 for n in names], 0.4, label="input vs target (no edit)", color="#a0a0a0")
        ax.set_xticks(x, names, rotation=60, fontsize=8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "AU error skipped", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("MAE (0..5)")
    ax.set_title("per-AU error (AUs re-estimated on the output)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sample_grid(path: Path, rows: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], column_names: Sequence[str],
                per_face_names: bool = False) -> None:
    """PNG grid: one row per face, the input first, then one column per target."""
    from PIL import Image, ImageDraw

    if not rows:
        return
    s = rows[0][0].shape[0]
    ncol = 1 + max(len(r[1]) for r in rows)
    head = 18
    canvas = Image.new("RGB", (ncol * s, head + len(rows) * s), "white")
    draw = ImageDraw.Draw(canvas)
    labels = ["input"] + ([f"target {k + 1}" for k in range(ncol - 1)] if per_face_names else list(column_names))
    for c, name in enumerate(labels):
        draw.text((c * s + 3, 3), name[: max(4, s // 7)], fill="black")
    for r, (src, outs) in enumerate(rows):
        y = head + r * s
        canvas.paste(Image.fromarray(src), (0, y))
        for c, o in enumerate(outs):
            canvas.paste(Image.fromarray(o), ((c + 1) * s, y))
    canvas.save(path)


# --------------------------------------------------------------------------------------------
# Comparison across evaluated models
# --------------------------------------------------------------------------------------------

COMPARE_COLUMNS = ("Method", "Conditioning", "Geometry", "Conf. penalty", "Accuracy (%)", "No edit (%)", "FID",
                   "PSNR (dB)",
                   "SSIM", "Identity: verif. (%)", "Identity dist.", "Sharpness", "Changed outside (%)")

#: What geometry guides each family (seed 003's Table 1 "Geometry" column).
FAMILY_GEOMETRY = {"geometry": "3D rig (mesh warp)", "ganimation": "Action Units", "ganimation-adain": "Action Units",
                   "dftnet": "Action Units + flow", "nst": "none (feature statistics)", "no-edit": "—"}


def load_metrics(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / "metrics.json"
    if not p.is_file():
        raise FacexprError(f"{folder}: no metrics.json; run 'facexpr evaluate ... --out {folder}' first")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FacexprError(f"{p}: damaged ({exc}); rerun facexpr evaluate into that folder") from exc


def _conditioning(m: dict[str, Any]) -> str:
    fam = m["model"]["family"]
    if fam == "no-edit":
        return "—"
    cond = str(m["model"].get("condition", "aus"))
    if cond == "aus" or cond.startswith("aus "):
        return "AUs (continuous)"
    labels = cond.removeprefix("labels: ").split(", ")
    return f"{len(labels)} labels" if cond.startswith("labels: ") and len(labels) > 3 else cond


def _geometry(m: dict[str, Any]) -> tuple[str, str]:
    """(geometry, confidence penalty) of seed 003's Table 1 for one evaluated model."""
    fam = m["model"]["family"]
    recipe = m["model"].get("recipe_config") or {}
    if fam == "stargan-depth":
        beta = float(recipe.get("beta", 0.0))
        geo = f"{recipe.get('geometry', 'depth')} ({fmt(float(recipe.get('lambda_depth', 0.0)), 2)})"
        return geo, (f"Yes ({fmt(beta, 2)})" if beta > 0 else "No")
    return FAMILY_GEOMETRY.get(fam, "N/A"), "—"


def _percent(value: float | None) -> str:
    return "—" if value is None else fmt(100.0 * value, 1)


def _same_faces(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluations edited the same faces with the same targets drawn."""
    keys = ("targets", "limit", "val_fraction", "seed") + (("per_face",) if a["config"].get("targets") == "dataset" else ())
    return (a["dataset"]["root"] == b["dataset"]["root"] and a["judge"]["name"] == b["judge"]["name"]
            and all(a["config"].get(k) == b["config"].get(k) for k in keys))


def no_edit_rate(m: dict[str, Any], bases: Sequence[dict[str, Any]]) -> float | None:
    """The judge's rate on the *unedited* faces for ``m``'s own targets, from the no-edit row of
    ``bases`` that scored the same faces: what an edit that changes nothing would score. A model
    asked for fewer expressions (a CycleGAN's two) has a higher floor than one asked for all
    seven, so its accuracy is read against this, not against another row's. None without one."""
    base = next((b for b in bases if _same_faces(m, b)), None)
    if base is None:
        return None
    own, floor = m["expression"]["per_emotion"], base["expression"]["per_emotion"]
    num = den = 0.0
    for cls, entry in own.items():
        n, rate = entry["generation_rate"].get("count", 0), _v(floor.get(cls, {}).get("generation_rate"))
        if n and rate is None:
            return None
        num, den = num + n * (rate or 0.0), den + n
    return num / den if den else None


def compare_rows(metrics: Sequence[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Rows of the comparison table plus notes (e.g. which realism metric each row uses)."""
    rows, notes = [], []
    bases = [m for m in metrics if m["model"]["family"] == "no-edit"]
    judges = {m["judge"]["name"] for m in metrics}
    datasets = {m["dataset"]["root"] for m in metrics}
    realism_names = set()
    for m in metrics:
        label, value = realism_line(m)
        realism_names.add(label)
        ident = m.get("identity") or {}
        cyc = m.get("cycle") or {}
        rows.append([
            m["model"]["name"],
            _conditioning(m),
            *_geometry(m),
            _percent(_v(m["expression"]["generation_rate"])),
            _percent(no_edit_rate(m, bases)),
            fmt(value, 3) if label == "FID" else f"{fmt(value, 3)} (FID-proxy*)",
            fmt(_v(cyc.get("psnr")), 2),
            fmt(_v(cyc.get("ssim")), 3),
            _percent(_v(ident.get("verification_rate"))),
            fmt(_v(ident.get("distance")), 3),
            fmt(_v((m.get("fidelity") or {}).get("sharpness_ratio")), 3),
            _percent(_v((m.get("fidelity") or {}).get("changed_outside_face"))),
        ])
    if len(realism_names) > 1:
        notes.append("WARNING: rows use different realism metrics (FID vs proxy); they are not comparable.")
    if any(n != "FID" for n in realism_names):
        notes.append("* Realism is the FID-proxy (dlib face embedding), NOT FID: Fréchet distance of dlib "
                     "128-d face descriptors (inputs vs outputs); no Inception weights were given.")
    notes.append(f"Accuracy: expression generation rate by the judge ({', '.join(sorted(judges))}). No edit: "
                 "the judge's rate on the unedited faces for the row's own targets (from the no-edit row; "
                 + ("absent here: evaluate without --model to add it" if not bases else
                    "'—' where no no-edit row scored the same faces") + "); read each accuracy against it. "
                 "PSNR/SSIM: cycle reconstruction G(G(x, y), source) vs x. Identity: dlib distance < 0.6. "
                 "Sharpness: median |Laplacian| inside the face, edit / input. Changed outside: pixels "
                 "outside the face moved by > 2 levels. Geometry: what guides the model; for StarGAN-depth the "
                 "map and its loss weight. Conf. penalty: the depth classifier's entropy weight beta.")
    if len(judges) > 1:
        notes.append("WARNING: rows were scored by different judges; accuracies are not comparable.")
    if len(datasets) > 1:
        notes.append(f"WARNING: rows come from different datasets: {', '.join(sorted(datasets))}.")
    return rows, notes


def compare_markdown(metrics: Sequence[dict[str, Any]]) -> str:
    if not metrics:
        raise ConfigError("compare needs at least one evaluated folder")
    rows, notes = compare_rows(metrics)
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"{n}  " for n in notes) + "\n"


def compare_png(path: Path, metrics: Sequence[dict[str, Any]]) -> None:
    plt = _mpl()
    rows, notes = compare_rows(metrics)
    width = 1.45 * len(COMPARE_COLUMNS)  # inches; a note line wraps at about 14 characters an inch
    notes = [line for n in notes for line in textwrap.wrap(n, int(14 * width))]
    table_h, notes_h = 0.3 * (len(rows) + 1), 0.16 * len(notes)
    fig, (ax, nx) = plt.subplots(2, 1, figsize=(width, table_h + notes_h + 0.2), dpi=110,
                                 gridspec_kw={"height_ratios": [table_h, notes_h]})
    for a in (ax, nx):
        a.axis("off")
    table = ax.table(cellText=rows, colLabels=list(COMPARE_COLUMNS), loc="center", cellLoc="center",
                     bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(col=list(range(len(COMPARE_COLUMNS))))
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    nx.text(0.0, 1.0, "\n".join(notes), fontsize=7.5, va="top", ha="left", transform=nx.transAxes)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
