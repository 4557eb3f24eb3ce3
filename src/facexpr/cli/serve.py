"""``facexpr serve``: the local web page."""

from __future__ import annotations

import signal
import sys
import threading

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The page has no login: keep 127.0.0.1 unless you trust the network.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--model", default="default", show_default=True,
              help="Model selected when the page opens (a shipped model name or a model folder); "
                   "the page offers the shipped models too.")
@click.option("--max-upload-mb", default=25.0, show_default=True, type=click.FloatRange(0.01, 1024),
              help="Uploads larger than this are refused (photos over 100 megapixels are refused too).")
def serve(host: str, port: int, model: str, max_upload_mb: float) -> None:
    """Start a local web page to edit photos: upload, pick a face, press an emotion or move the
    Action Unit sliders, compare, download at full resolution, animate.

    \b
    Example:
      facexpr serve            # then open the printed address in a browser

    Uploads and results live in a temp folder the server owns; a visitor's files are deleted when
    the page is closed and all of them when the server stops (Ctrl-C).
    """
    from facexpr.web.workspace import Limits, Workspace

    workspace = Workspace(None if model == "default" else model,
                          Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024)))
    stop = threading.Event()
    demo = None

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        from facexpr.web.app import launch

        click.echo(f"facexpr serve: loading model {workspace.default_model} ...", err=True)
        workspace.editor()  # load before listening, so the first visitor does not wait for it
        demo, url = launch(workspace, host, port)
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(f"warning: listening on {host}; anyone who can reach it can use the page", err=True)
        click.echo(f"facexpr serve: open {url.rstrip('/')}/ in a browser (model {workspace.default_model}; "
                   f"files in {workspace.root}, deleted at exit; Ctrl-C to stop)")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if demo is not None:
            demo.close()
        workspace.close()
        click.echo("facexpr serve: stopped; temp files deleted", err=True)
