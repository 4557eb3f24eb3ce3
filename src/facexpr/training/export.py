"""Export a run as a self-contained model folder with a model card.

What is exported is the recipe's ``exports``: model component -> network of the checkpoint (the
EMA generator for the GANs; both translators of a CycleGAN). The family assembles them
(``ModelFamily.component_modules``) into the one module every model folder loads as.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from facexpr.errors import ConfigError, OutputError
from facexpr.models import get_family, save_pretrained
from facexpr.models.base import config_from_dict
from facexpr.training import checkpoint as ckpt
from facexpr.training.config import RESOLVED
from facexpr.training.reporting import read_metrics
from facexpr.weights_io import read_tensors

# Terms of the data sets this project trains on, keyed by a word found in the folder/set name.
DATA_TERMS: dict[str, tuple[str, str]] = {
    "utk": ("UTKFace (Zhang, Song, Qi 2017)", "non-commercial research purposes only; copyright stays with the photos' owners"),
    "lfw": ("Labeled Faces in the Wild (Huang et al. 2007), expression labels from the facial_expressions project", "research use; cite LFW"),
    "taiwan": ("Taiwanese Facial Expression Image Database (Chen, Cho, Tseng 2013)", "academic research use only"),
    "tfeid": ("Taiwanese Facial Expression Image Database (Chen, Cho, Tseng 2013)", "academic research use only"),
    "ganimation": ("GANimation sample data (Pumarola et al. 2018, EmotioNet crops)", "research use"),
    "emotionet": ("EmotioNet (Benitez-Quiroz et al. 2016)", "research use"),
    "celeba": ("CelebA / CelebA-HQ (Liu et al. 2015; Karras et al. 2018)", "non-commercial research"),
}


def data_terms(parts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(folder name, data set, terms) for each training folder; unknown sets say so."""
    out = []
    for part in parts:
        key = f"{part.get('name', '')} {part.get('root', '')} {part.get('sources', '')}".lower()
        match = next((v for k, v in DATA_TERMS.items() if k in key), None)
        if match is None:
            out.append((str(part.get("name")), "unrecognised data set", "unknown: check the terms of this data before any use"))
        else:
            out.append((str(part.get("name")), match[0], match[1]))
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _condition_lines(condition: Any) -> list[str]:
    if condition.kind == "mask":
        return ["- Condition: none but the hole: the mask (B,1,S,S), 1 where the network paints."]
    if condition.kind == "aus":
        return ["- Condition: the 17 OpenFace AU intensities (AU01 AU02 AU04 AU05 AU06 AU07 AU09 AU10 AU12 AU14 AU15 "
                "AU17 AU20 AU23 AU25 AU26 AU45, 0..5) divided by 5."]
    return [f"- Condition: one-hot over the expressions {', '.join(condition.labels)} "
            f"({'interpolable' if condition.interpolates else 'no intensity: one label at a time'})."]


def model_card(doc: dict[str, Any], state: dict[str, Any], metrics: list[dict[str, Any]], n_params: int, fp16: bool) -> str:
    family = get_family(doc["family"])
    train = doc["train"]
    data = doc["data"]
    sched = doc["schedule"]
    recipe_cfg = doc.get("recipe_config") or train.get("recipe_config") or {}
    model_cfg = config_from_dict(family.config_cls, doc["model_config"])
    condition = family.condition(model_cfg)
    size = doc["model_config"][family.size_field]
    if condition.kind == "mask":  # the mouth inpainter: its own folder format and loader
        use = ["from facexpr.models.mouth import load_mouth, fill_mouth",
               "net = load_mouth(FOLDER)",
               "out = net(crop, hole)   # crop (B,3,S,S) in [-1,1], hole (B,1,S,S) 1 = paint",
               "photo = fill_mouth(net, rgb, target_landmarks)   # or: facexpr fit-geometry --mouth FOLDER"]
        source = f"- Input: {size} px mouth crops (`facexpr.face.mouth.mouth_frame`), RGB in [-1, 1], and the hole."
    else:
        cond_call = "au_condition(target_aus)   # AUs 0..5" if condition.kind == "aus" else "one_hot_labels"
        use = ["from facexpr.models import from_pretrained, au_condition",
               "G = from_pretrained(FOLDER, device='cpu')",
               f"out = G(image, {cond_call})   # image (B,3,H,W) in [-1,1]",
               "out.result"]
        source = f"- Input: aligned face crops of {size} px (facexpr's alignment), RGB in [-1, 1]."
    last_train = next((r for r in reversed(metrics) if any(k.startswith("g") and "/" in k for k in r)), {})
    last_val = next((r for r in reversed(metrics) if any(k.startswith("val/") for k in r)), {})
    terms = data_terms(data["folders"])
    lines = [
        f"# facexpr model: {family.name}",
        "",
        f"{family.description}.",
        f"Paper: {family.paper}.",
        "",
        "## Use",
        "",
        "```python",
        *use,
        "```",
        "",
        source,
        *_condition_lines(condition),
        f"- Output: `{family.output_convention}`.",
        f"- Components: {', '.join(f'{c} (from the run network {n})' for c, n in doc.get('exports', {'generator': 'G_ema'}).items())}; "
        f"{n_params / 1e6:.2f} M parameters, stored as {'float16' if fp16 else 'float32'}.",
        "",
        "## Architecture",
        "",
        *[f"- {k}: {v}" for k, v in doc["model_config"].items()],
        "",
        "## Training data",
        "",
        *[f"- `{p['name']}`: {p['count']} aligned crops ({p['size']} px)" for p in data["folders"]],
        f"- Identity-disjoint split: {data['train']} train / {data['val']} validation images "
        f"(val_fraction {train['val_fraction']}, split_seed {train['split_seed']}).",
        "",
        "## Training",
        "",
        f"- Steps: {state.get('step')} of {sched['total_steps']} planned, {sched.get('iterations_per_step', 1)} "
        f"iterations (batches) each; epochs seen: {_fmt(float(state.get('epoch', 0.0)))}; images seen: {state.get('images_seen')}.",
        f"- Batch {train['batch']}; linear learning-rate decay over the last {train['decay_fraction']:.3g} of training.",
        f"- Recipe {doc.get('recipe', '')} options (learning rates, loss weights, schedule): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in recipe_cfg.items()) + ".",
        f"- Seed {train['seed']}; facexpr {doc.get('facexpr_version')}, torch {doc.get('torch_version')}.",
        "",
        "## Metrics seen during training",
        "",
        *([f"- last training row (step {last_train.get('step')}): "
           + ", ".join(f"{k} {_fmt(v)}" for k, v in last_train.items() if "/" in k)] if last_train else ["- none logged"]),
        *([f"- last validation row (step {last_val.get('step')}, the exported networks on fixed validation faces): "
           + ", ".join(f"{k} {_fmt(v)}" for k, v in last_val.items() if "/" in k)] if last_val else []),
        "- Validation rows are judged by the training networks themselves, not by an independent estimator; "
        "use `facexpr evaluate` for independent numbers.",
        "",
        "## Licence and terms of use",
        "",
        "The code is Apache-2.0. These weights are derived from the training images below, whose terms "
        "restrict use; **the weights are for research use only** and inherit the most restrictive terms:",
        "",
        *[f"- `{name}`: {dataset} — {t}" for name, dataset, t in terms],
        "",
        "## Limitations",
        "",
        "- Trained on the faces of public research sets; expect worse results on under-represented "
        "ages, skin tones, poses and lighting.",
        ("- Edits are limited to what 17 AUs can describe; out-of-range targets give artefacts."
         if condition.kind == "aus" else
         "- It paints a plausible interior at its crop size; on a large face it is upsampled and softer than the photo."
         if condition.kind == "mask" else f"- Edits are limited to the {len(condition.labels)} trained expressions."),
        "- Do not use to deceive: edited photos of real people should be labelled as edited.",
        "",
    ]
    return "\n".join(lines)


def _check_export_target(run_dir: Path, out: Path) -> None:
    """Refuse an output folder that is the run, holds it or lies inside it (``--overwrite`` would
    delete the run's checkpoints, metrics and samples)."""
    r, o = run_dir.resolve(), out.resolve()
    if o == r or r in o.parents or o in r.parents:
        where = "is the run" if o == r else ("lies inside the run" if r in o.parents else "contains the run")
        raise OutputError(
            f"{out}: {where} {run_dir}; exporting there could remove the run's checkpoints, metrics and "
            "samples. Nothing was removed; choose an output folder outside the run"
        )


def export_run(run_dir: str | Path, out_folder: str | Path, fp16: bool = False, overwrite: bool = False) -> Path:
    """Write the exported networks of ``run_dir``'s latest checkpoint (the recipe's ``exports``:
    the EMA generator for the GANs) as a model folder, in the family's format (``save_model``)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / RESOLVED
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir}: not a training run folder (no {RESOLVED})")
    _check_export_target(run_dir, Path(out_folder))
    doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise ConfigError(f"{run_dir}: has no checkpoint yet; train first (a checkpoint is written every --checkpoint-every steps and at exit)")
    state = ckpt.read_checkpoint_state(latest)
    family = get_family(doc["family"])
    config = config_from_dict(family.config_cls, doc["model_config"])
    exports = doc.get("exports") or {"generator": "G_ema"}  # runs written before recipes declared it
    generator = family.build_generator(config)
    weights = read_tensors(latest / "weights.safetensors",
                           f"delete {latest} to export the previous checkpoint")
    for component, module in family.component_modules(generator).items():
        prefix = f"{exports[component]}/"
        try:
            module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                   strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise ConfigError(f"{latest}: weights of {exports[component]!r} do not match the run's model config "
                              f"({first})") from exc
    generator.eval()
    n_params = sum(p.numel() for p in generator.parameters())
    # rows logged after this checkpoint describe weights that are not the ones exported
    metrics = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= int(state.get("step", 0))]
    card = model_card(doc, state, metrics, n_params, fp16)
    training = {
        "run": run_dir.name,
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "data": [{k: p[k] for k in ("name", "count", "size")} for p in doc["data"]["folders"]],
        "split": {"train": doc["data"]["train"], "val": doc["data"]["val"],
                  "val_fraction": doc["train"]["val_fraction"], "split_seed": doc["train"]["split_seed"]},
        "terms": [{"folder": n, "dataset": d, "terms": t} for n, d, t in data_terms(doc["data"]["folders"])],
        "recipe": doc.get("recipe"),
        "recipe_config": doc.get("recipe_config") or {},
    }
    save = family.save_model or save_pretrained  # the mouth network keeps its own format (load_mouth)
    with torch.no_grad():
        return save(generator, out_folder, fp16=fp16, model_card=card, training=training, overwrite=overwrite)
