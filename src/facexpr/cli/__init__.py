"""The ``facexpr`` command: a thin layer over the pipeline, training and evaluation.

Subcommands live in their own modules and are imported only when invoked, so ``facexpr --help``
stays fast and one broken optional dependency does not take down every command.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from facexpr import __version__
from facexpr.errors import FacexprError

# name -> (module, attribute, one-line help shown by ``facexpr --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "edit": ("facexpr.cli.edit", "edit", "Change the expression of faces in photos."),
    "reenact": ("facexpr.cli.video", "reenact", "Make the face in a photo follow a driving video (MP4)."),
    "animate": ("facexpr.cli.edit", "animate", "Animate a face from its own expression to a target (GIF/MP4)."),
    "models": ("facexpr.cli.edit", "models", "List the shipped models and their model cards."),
    "export-onnx": ("facexpr.cli.edit", "export_onnx", "Export a model's generator to ONNX."),
    "analyze": ("facexpr.cli.analyze", "analyze", "Detect faces and print landmarks, Action Units and pose."),
    "prepare": ("facexpr.cli.prepare", "prepare", "Detect, align, crop and annotate a folder of faces."),
    "import-openface": ("facexpr.cli.prepare", "import_openface", "Import AU labels from an OpenFace CSV."),
    "import-ganimation": ("facexpr.cli.prepare", "import_ganimation", "Import a GANimation aus_openface.pkl dataset."),
    "train": ("facexpr.cli.train", "train", "Train a model family on a prepared dataset."),
    "export": ("facexpr.cli.train", "export", "Export a run's EMA generator as a model folder."),
    "evaluate": ("facexpr.cli.evaluate", "evaluate", "Score a model on a prepared dataset."),
    "compare": ("facexpr.cli.evaluate", "compare", "One table across evaluated models."),
    "train-classifier": ("facexpr.cli.evaluate", "train_classifier", "Train an expression classifier (a judge)."),
    "fit-geometry": ("facexpr.cli.geometry", "fit_geometry", "Fit the geometry-driven model (rig + shading)."),
    "train-mouth": ("facexpr.cli.train_mouth", "train_mouth_command", "Train the mouth-interior inpainter (alias of train --model mouth)."),
    "serve": ("facexpr.cli.serve", "serve", "Start a local web page to edit photos (upload, emotions, AU sliders)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {name!r} is not available: {exc}") from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facexpr")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the log lines of MediaPipe/TFLite (silenced by default).")
def cli(verbose: bool = False) -> None:
    """Change facial expressions in photos and videos, and train, evaluate and compare
    expression-synthesis GANs.

    Run ``facexpr COMMAND --help`` for the options of each command.
    """
    # Read by facexpr.face.detect.quiet_native_logs; set before any MediaPipe graph starts.
    if verbose:
        os.environ["FACEXPR_VERBOSE"] = "1"
    # TFLite / glog honour these where they are consulted at all (absl's C++ log does not,
    # hence the descriptor-level silencing in face.detect).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    os.environ.setdefault("GLOG_minloglevel", "0" if verbose else "2")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FacexprError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
