"""The page of ``facexpr serve``: Gradio widgets wired to a :class:`~facexpr.web.workspace.Workspace`.

Why Gradio: its wheel carries the whole compiled frontend (no CDN, no Node at run time, fonts
included), it already has the widgets the page needs (drag-and-drop/paste image upload,
before/after slider, file downloads, video), a per-tab session id for the server-side cache, an
upload size limit enforced both in the browser and by the server, and a Python client that the
load test uses. A hand-written page would have had to re-implement all of that.

What this module adds on top of Gradio:

- Every handler returns a message for the status line and never raises: a
  :class:`~facexpr.errors.FacexprError` shows its own text, anything else is logged on the server
  and shown as a one-line apology (no stack trace reaches the page).
- Uploaded images reach the handlers as the path Gradio wrote (``_ImageUpload``): the
  original bytes, so a JPEG download keeps the input's encoding, and decoding happens in
  :func:`facexpr.imageio.load_image` with its limits and messages, not in Gradio.
- Uploaded videos likewise reach the handlers untouched (``_VideoUpload``: no conversion by
  Gradio); :meth:`~facexpr.web.workspace.Workspace.open_video` checks them.
- Edits return previews at most :data:`~facexpr.web.workspace.PREVIEW_SIDE` px; the
  full-resolution downloads are written by a follow-up event, after the preview is on screen.
"""

import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from facexpr.errors import FacexprError
from facexpr.expression import AU_FACS, AU_NAMES, AU_RANGE, EMOTIONS
from facexpr.web.workspace import ALL_FACES, Upload, Workspace, draw_faces, face_at, preview

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

TITLE = "facexpr: change a facial expression"
_CSS = """
#facexpr-status { min-height: 2.5em; padding: 0.4em 0.8em; border-radius: 6px;
                  background: var(--block-background-fill); }
#facexpr-status.error { background: #fde8e8; color: #8a1010; }
.facexpr-emotions button { min-width: 6em; }
"""


def import_gradio(cache_dir: os.PathLike[str] | str) -> Any:
    """Import Gradio with analytics off and its cache inside the server's own temp folder.

    Both are read from the environment when Gradio is imported, so this must run first.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    try:
        import gradio
    except ImportError as exc:
        raise FacexprError("the web page needs Gradio: pip install 'facexpr[web]'") from exc
    return gradio


def _message(kind: str, text: str) -> Any:
    import gradio as gr

    return gr.update(value=text, elem_classes=["error"] if kind == "error" else [])


def _safely(n_outputs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a handler's errors into a message in the status line (its last output)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            import gradio as gr

            try:
                return fn(*args, **kwargs)
            except FacexprError as exc:
                text = f"**Error:** {exc}"
            except Exception:  # noqa: BLE001 - the page must get a message, the log the details
                log.exception("web handler %s failed", fn.__name__)
                text = ("**Error:** something went wrong on the server (details are in its log); "
                        "try again or use another photo")
            rest = [gr.update()] * (n_outputs - 1)
            return (*rest, _message("error", text)) if rest else _message("error", text)

        return run

    return wrap


def _visitor_key(request: Any) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def build_app(workspace: Workspace) -> "gr.Blocks":
    """The page, bound to ``workspace`` (which owns every file and model it uses)."""
    gr = import_gradio(workspace.cache)

    class _ImageUpload(gr.Image):
        """gr.Image that hands the handler the uploaded file untouched (path + client's name)."""

        is_template = True  # rendered by the frontend's Image widget

        def preprocess(self, payload: Any) -> Upload | None:  # type: ignore[override]
            if payload is None or payload.path is None:
                return None
            return Upload(path=payload.path, name=payload.orig_name or "photo")

    class _VideoUpload(gr.Video):
        """gr.Video that hands the handler the uploaded file untouched (no conversion by Gradio)."""

        is_template = True  # rendered by the frontend's Video widget

        def preprocess(self, payload: Any) -> Upload | None:  # type: ignore[override]
            if payload is None or payload.path is None:
                return None
            return Upload(path=payload.path, name=payload.orig_name or "video")

    n_au = len(AU_NAMES)
    models = workspace.model_names()
    limit_text = (f"Photos up to {workspace.limits.max_upload_mb:.3g} MB and "
                  f"{workspace.limits.max_pixels / 1e6:g} megapixels.")

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"## {TITLE}\nUpload a portrait, then press an emotion or move the Action Unit "
                    f"sliders. Only the face changes; the download keeps the photo's full resolution. "
                    f"{limit_text}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                photo = _ImageUpload(label="Photo (drop, paste or click)", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], elem_id="facexpr-photo", height=300)
                status = gr.Markdown("Upload a photo to start.", elem_id="facexpr-status")
                faces_view = gr.Image(label="Faces found (0 = largest; click one to pick it)",
                                      interactive=False, format="jpeg", elem_id="facexpr-faces", height=300,
                                      buttons=["fullscreen"])
                with gr.Row():
                    face_pick = gr.Radio(choices=[("0", "0")], value="0", label="Face to edit",
                                         elem_id="facexpr-face", scale=2, visible=False)
                    model = gr.Dropdown(choices=models, value=workspace.default_model, label="Model",
                                        elem_id="facexpr-model", scale=1)
            with gr.Column(scale=3, min_width=420):
                with gr.Tabs():
                    with gr.Tab("Edit", elem_id="facexpr-tab-edit"):
                        compare = gr.ImageSlider(label="Before / after (drag the handle)", format="jpeg",
                                                 interactive=False, elem_id="facexpr-compare", max_height=560)
                        with gr.Row(elem_classes=["facexpr-emotions"]):
                            emotion_buttons = {name: gr.Button(name, elem_id=f"facexpr-emotion-{name}", size="sm")
                                               for name in EMOTIONS}
                        intensity = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Intensity",
                                              info="0 keeps the face as it is, 1 is the full emotion",
                                              elem_id="facexpr-intensity", buttons=[])
                        downloads = gr.File(label="Full-resolution result (PNG, and JPEG encoded like the input)",
                                            file_count="multiple", interactive=False, elem_id="facexpr-downloads")
                        reset = gr.Button("Back to the photo's own expression", size="sm", elem_id="facexpr-reset")
                        with gr.Accordion("Action Units (start at the face's own)", open=False):
                            sliders = []
                            for row in range(0, n_au, 3):
                                with gr.Row():
                                    for k in range(row, min(row + 3, n_au)):
                                        sliders.append(gr.Slider(
                                            *AU_RANGE, value=0.0, step=0.1, label=f"{AU_NAMES[k]} {AU_FACS[k]}",
                                            elem_id=f"facexpr-{AU_NAMES[k]}", min_width=150, buttons=[]))
                        with gr.Accordion("Make it look like this (a reference photo)", open=False):
                            reference = _ImageUpload(label="Reference photo", type="filepath", image_mode=None,
                                                     sources=["upload", "clipboard"], height=220,
                                                     elem_id="facexpr-reference")
                    with gr.Tab("Animation", elem_id="facexpr-tab-animation"):
                        gr.Markdown("From the face's own expression to the latest edit. Frames are at most "
                                    "720 px on the long side; `facexpr animate` writes full resolution.")
                        with gr.Row():
                            frames = gr.Slider(2, 48, value=16, step=1, label="Frames")
                            fps = gr.Slider(1, 30, value=12, step=1, label="Frames per second")
                        with gr.Row():
                            back = gr.Checkbox(value=True, label="Return to the start")
                            fmt = gr.Radio(["GIF", "MP4"], value="GIF", label="Format")
                        make_anim = gr.Button("Make the animation", variant="primary", elem_id="facexpr-animate")
                        anim_gif = gr.Image(label="Animation", interactive=False, elem_id="facexpr-anim-gif")
                        anim_mp4 = gr.Video(label="Animation", interactive=False, visible=False,
                                            elem_id="facexpr-anim-mp4")
                        anim_file = gr.File(label="Download the animation", interactive=False)
                    with gr.Tab("Video", elem_id="facexpr-tab-video"):
                        gr.Markdown(
                            f"Upload a driving video: **Reenact** makes the photo's face (the picked one) follow "
                            f"the face in it, with its sound; **Edit this video** gives every face in the video "
                            f"the emotion last pressed on the Edit tab, at the intensity set there. Videos up to "
                            f"{workspace.limits.max_upload_mb:.3g} MB and "
                            f"{workspace.limits.max_video_seconds:g} s; `facexpr reenact` and `facexpr edit` "
                            f"take longer ones.")
                        driving = _VideoUpload(label="Video (drop or click)", sources=["upload"],
                                               elem_id="facexpr-video", height=240)
                        with gr.Row():
                            absolute = gr.Checkbox(value=False, label="Absolute (copy the video's expression "
                                                   "as it is, instead of its changes)", elem_id="facexpr-absolute")
                        with gr.Row():
                            make_reenact = gr.Button("Reenact the photo", variant="primary", elem_id="facexpr-reenact")
                            make_edit_video = gr.Button("Edit this video", elem_id="facexpr-edit-video")
                        video_out = gr.Video(label="Result", interactive=False, elem_id="facexpr-video-out")
                        video_file = gr.File(label="Download the video", interactive=False,
                                             elem_id="facexpr-video-file")

        # -- handlers -----------------------------------------------------------------------
        def faces_image(v: Any, selected: str) -> np.ndarray:
            p = v.photo
            return draw_faces(preview(p.rgb), p.faces, p.preview_scale, selected, p.refused)

        def shown(v: Any) -> tuple[np.ndarray, np.ndarray]:
            before = preview(v.photo.rgb)
            return before, preview(v.edit.image) if v.edit is not None else before

        def slider_updates(values: np.ndarray) -> list[Any]:
            return [gr.update(value=round(float(x), 1)) for x in values]

        def edit_outputs(v: Any, text: str, slider_values: np.ndarray | None) -> tuple[Any, ...]:
            sl = slider_updates(slider_values) if slider_values is not None else [gr.update()] * n_au
            return (shown(v), *sl, _message("ok", text))

        def describe(v: Any, what: str) -> str:
            e = v.edit
            faces = ", ".join(str(i) for i in e.indices)
            left = "".join(f" Not edited: {m}." for m in e.refused)
            return (f"{what}: face {faces} edited in {e.seconds:.2f} s with {e.model}.{left} "
                    f"Downloads follow below.")

        @_safely(5 + n_au)
        def on_upload(upload: Upload | None, model_name: str, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if upload is None:
                workspace.reset(v)
                return (None, gr.update(choices=[("0", "0")], value="0", visible=False), None, None,
                        *[gr.update()] * n_au, _message("ok", "Upload a photo to start."))
            try:
                p = workspace.open_photo(v, upload, model_name)
            except FacexprError as exc:  # the old photo is gone: clear what showed it
                return (None, gr.update(choices=[("0", "0")], value="0", visible=False), None, None,
                        *[gr.update()] * n_au, _message("error", f"**Error:** {exc}"))
            choices = [(f"{i}" + (" (largest)" if i == 0 and len(p.faces) > 1 else ""), str(i))
                       for i in range(len(p.faces))]
            if len(p.faces) > 1:
                choices.append(("all faces", ALL_FACES))
            h, w = p.rgb.shape[:2]
            n = len(p.faces)
            text = (f"Found {n} face{'s' if n > 1 else ''} in {p.name} ({w}x{h}). "
                    + ("Pick one (click its box or use the buttons below it), then press" if n > 1 else "Press")
                    + " an emotion, move an Action Unit slider or load a reference photo."
                    + "".join(f" In red: {m}, so it is shown but not edited." for m in p.refused.values()))
            before = preview(p.rgb)
            return (faces_image(v, "0"), gr.update(choices=choices, value="0", visible=n > 1), (before, before), None,
                    *slider_updates(workspace.slider_values(v, "0")), _message("ok", text))

        upload_outputs = [faces_view, face_pick, compare, downloads, *sliders, status]
        photo.upload(on_upload, [photo, model], upload_outputs, api_name="upload", show_progress="minimal")
        photo.clear(on_upload, [photo, model], upload_outputs, api_visibility="private")

        edit_outputs_list = [compare, *sliders, status]

        def on_emotion(name: str, strength: float, selected: str, model_name: str, request: Any) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            workspace.edit(v, "emotion", selected, model_name, emotion=name, intensity=strength)
            return edit_outputs(v, describe(v, f"{name.capitalize()} at {strength:g}"), v.edit.targets[0])

        @_safely(2)
        def on_downloads(request: gr.Request) -> tuple[Any, Any]:
            v = workspace.visitor(_visitor_key(request))
            files = workspace.downloads(v)
            return ([str(f) for f in files] if files else None), gr.update()

        def then_downloads(event: Any, public: bool = False) -> None:
            """After an edit: write the full-resolution files and offer them."""
            event.then(on_downloads, None, [downloads, status], api_name="downloads" if public else None,
                       api_visibility="public" if public else "private", show_progress="hidden")

        def emotion_handler(name: str) -> Callable[..., Any]:
            @_safely(len(edit_outputs_list))
            def on_button(strength: float, selected: str, model_name: str, request: gr.Request) -> tuple[Any, ...]:
                return on_emotion(name, strength, selected, model_name, request)

            on_button.__name__ = f"on_{name}"
            return on_button

        for k, (name, button) in enumerate(emotion_buttons.items()):
            then_downloads(button.click(emotion_handler(name), [intensity, face_pick, model], edit_outputs_list,
                                        api_name=f"emotion_{name}", show_progress="minimal"), public=k == 0)

        @_safely(len(edit_outputs_list))
        def on_intensity(strength: float, selected: str, model_name: str, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if v.photo is None or v.emotion is None:
                return (gr.update(), *[gr.update()] * n_au,
                        _message("ok", "Press an emotion button; the intensity applies to it."))
            return on_emotion(v.emotion, strength, selected, model_name, request)

        # .input, not .release: Gradio fires release on pointer-up only, so keyboard users would
        # never see an edit; always_last collapses a drag's many events into the latest value.
        then_downloads(intensity.input(on_intensity, [intensity, face_pick, model], edit_outputs_list,
                                       api_visibility="private", show_progress="minimal", trigger_mode="always_last"))

        @_safely(len(edit_outputs_list))
        def on_sliders(request: gr.Request, selected: str, model_name: str, *values: float) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            workspace.edit(v, "aus", selected, model_name, sliders=np.asarray(values, np.float32))
            moved = [AU_NAMES[k] for k in range(n_au) if abs(values[k] - v.baseline[k]) > 1e-3]
            what = "Action Units " + (", ".join(moved) if moved else "(none moved)")
            return edit_outputs(v, describe(v, what), None)

        for k, s in enumerate(sliders):
            then_downloads(s.input(on_sliders, [face_pick, model, *sliders], edit_outputs_list,
                                   api_name="aus" if k == 0 else None, trigger_mode="always_last",
                                   api_visibility="public" if k == 0 else "private", show_progress="minimal"))

        @_safely(len(edit_outputs_list))
        def on_reference(upload: Upload | None, selected: str, model_name: str,
                         request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if upload is None:
                return (gr.update(), *[gr.update()] * n_au, _message("ok", "Reference photo removed."))
            workspace.set_reference(v, upload, model_name)
            if v.photo is None:
                return (gr.update(), *[gr.update()] * n_au,
                        _message("ok", f"Reference {upload.name} read; now upload the photo to edit."))
            workspace.edit(v, "reference", selected, model_name)
            return edit_outputs(v, describe(v, f"Like {upload.name}"), v.edit.targets[0])

        then_downloads(reference.upload(on_reference, [reference, face_pick, model], edit_outputs_list,
                                        api_name="reference", show_progress="minimal"))

        def redo(v: Any, selected: str, model_name: str, strength: float, request: Any) -> tuple[Any, ...]:
            """After a new face pick or model: repeat the last emotion/reference, else show the photo."""
            if v.last_kind == "emotion" and v.emotion:
                return on_emotion(v.emotion, strength, selected, model_name, request)
            if v.last_kind == "reference" and v.reference is not None:
                workspace.edit(v, "reference", selected, model_name)
                return edit_outputs(v, describe(v, f"Like {v.reference_name}"), v.edit.targets[0])
            workspace.reset(v)
            return edit_outputs(v, f"Face {selected} picked; its own Action Units are on the sliders.",
                                workspace.pick_face(v, selected))

        @_safely(2 + len(edit_outputs_list))
        def on_pick(selected: str, model_name: str, strength: float, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if v.photo is None:
                return (gr.update(), gr.update(), gr.update(), *[gr.update()] * n_au,
                        _message("ok", "Upload a photo first."))
            workspace.pick_face(v, selected)
            return (faces_image(v, selected), gr.update(value=selected),
                    *redo(v, selected, model_name, strength, request))

        pick_outputs = [faces_view, face_pick, *edit_outputs_list]
        then_downloads(face_pick.input(on_pick, [face_pick, model, intensity], pick_outputs,
                                       api_visibility="private", show_progress="minimal"))

        @_safely(2 + len(edit_outputs_list))
        def on_click_face(model_name: str, strength: float, evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if v.photo is None or not evt.index:
                return (gr.update(), gr.update(), gr.update(), *[gr.update()] * n_au, gr.update())
            x, y = (float(c) / v.photo.preview_scale for c in evt.index[:2])
            i = face_at(v.photo.faces, x, y)
            if i is None:
                return (gr.update(), gr.update(), gr.update(), *[gr.update()] * n_au,
                        _message("ok", "No face there; click inside a box."))
            return on_pick(str(i), model_name, strength, request)

        then_downloads(faces_view.select(on_click_face, [model, intensity], pick_outputs,
                                         api_visibility="private", show_progress="minimal"))

        @_safely(len(edit_outputs_list) + 1)
        def on_model(selected: str, model_name: str, strength: float, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            workspace.editor(model_name)  # load it now, so a bad model says so at once
            if v.photo is None:
                return (gr.update(), gr.update(), *[gr.update()] * n_au, _message("ok", f"Model {model_name} ready."))
            return (None, *redo(v, selected, model_name, strength, request))

        then_downloads(model.input(on_model, [face_pick, model, intensity], [downloads, *edit_outputs_list],
                                   api_visibility="private", show_progress="minimal"))

        @_safely(len(edit_outputs_list) + 1)
        def on_reset(selected: str, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if v.photo is None:
                return (gr.update(), gr.update(), *[gr.update()] * n_au, _message("ok", "Upload a photo first."))
            workspace.reset(v)
            return (None, *edit_outputs(v, "Back to the photo as uploaded.", workspace.pick_face(v, selected)))

        reset.click(on_reset, [face_pick], [downloads, *edit_outputs_list], api_visibility="private")

        @_safely(4)
        def on_animate(model_name: str, n_frames: float, rate: float, loop_back: bool, kind: str,
                       request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            path = workspace.animate(v, model_name, int(n_frames), float(rate), bool(loop_back), kind)
            gif = kind.upper() == "GIF"
            text = f"Animation of {int(n_frames)} frames written ({path.stat().st_size / 1e6:.1f} MB)."
            return (gr.update(value=str(path) if gif else None, visible=gif),
                    gr.update(value=None if gif else str(path), visible=not gif), str(path), _message("ok", text))

        make_anim.click(on_animate, [model, frames, fps, back, fmt], [anim_gif, anim_mp4, anim_file, status],
                        api_name="animate")

        @_safely(3)
        def on_video(upload: Upload | None, request: gr.Request) -> tuple[Any, ...]:
            v = workspace.visitor(_visitor_key(request))
            if upload is None:
                return None, None, _message("ok", "Video removed.")
            clip = workspace.open_video(v, upload)
            w, h = clip.info.size
            return None, None, _message("ok", f"Video {clip.name} read ({w}x{h}, {clip.info.duration:.1f} s, "
                                              f"{clip.info.fps:.3g} fps). Press Reenact or Edit this video.")

        video_outputs = [video_out, video_file, status]
        driving.upload(on_video, [driving], video_outputs, api_name="video", show_progress="minimal")
        driving.clear(on_video, [driving], video_outputs, api_visibility="private")

        def progress_of(progress: Any, what: str) -> Callable[[int, int], None]:
            return lambda done, total: progress((done, total), desc=what, unit="frames")

        def video_done(path: Any, text: str) -> tuple[Any, ...]:
            return str(path), str(path), _message("ok", text)

        @_safely(3)
        def on_reenact(model_name: str, selected: str, use_absolute: bool, request: gr.Request,
                       progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            v = workspace.visitor(_visitor_key(request))
            mode = "absolute" if use_absolute else "relative"
            r = workspace.reenact(v, model_name, selected, mode, progress_of(progress, "Reenacting"))
            return video_done(r.path, f"Reenacted ({mode}): {r.frames} frames in {r.seconds:.1f} s "
                                      f"({r.speed:.1f} frames/s) with {model_name}.")

        make_reenact.click(on_reenact, [model, face_pick, absolute], video_outputs, api_name="reenact")

        @_safely(3)
        def on_edit_video(model_name: str, strength: float, request: gr.Request,
                          progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            v = workspace.visitor(_visitor_key(request))
            r = workspace.edit_video(v, model_name, v.emotion, strength, progress=progress_of(progress, "Editing"))
            return video_done(r.path, f"Every face of the video made {v.emotion} at {strength:g}: {r.frames} "
                                      f"frames in {r.seconds:.1f} s ({r.speed:.1f} frames/s).")

        make_edit_video.click(on_edit_video, [model, intensity], video_outputs, api_name="edit_video")

        def on_leave(request: gr.Request) -> None:
            workspace.end(_visitor_key(request))

        demo.unload(on_leave)
    demo.facexpr_css = _CSS  # type: ignore[attr-defined]
    return demo


def launch(workspace: Workspace, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> tuple[Any, str]:
    """Start the server (and return ``(demo, url)``); with ``block`` serve until interrupted."""
    demo = build_app(workspace)
    demo.queue(default_concurrency_limit=4)
    try:
        _, url, _ = demo.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, show_error=False,
            prevent_thread_lock=True, max_file_size=workspace.limits.max_upload_bytes, ssr_mode=False,
            pwa=False, mcp_server=False, css=_CSS, footer_links=["api"],
        )
    except OSError as exc:
        raise FacexprError(f"cannot listen on {host}:{port} ({exc}); pick another --port") from exc
    return demo, url
