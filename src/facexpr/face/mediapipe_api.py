"""The few MediaPipe Tasks names facexpr uses, imported without MediaPipe's package ``__init__`` files.

``import mediapipe`` runs ``mediapipe/__init__.py``, which imports ``mediapipe.tasks.python``, whose
``__init__`` imports every task (audio with sounddevice, text, vision), and the vision package's
``__init__`` imports its drawing helpers and with them ``matplotlib.pyplot``: ~0.9 s on 2 cores,
of which the face landmarker, ``BaseOptions`` and ``Image`` need ~0.25 s.

:func:`face_landmarker_api` imports just those modules. When MediaPipe is not imported yet, it
first registers the four packages on the way (``mediapipe``, ``mediapipe.tasks``,
``mediapipe.tasks.python``, ``mediapipe.tasks.python.vision``) as *deferred* packages: real module
objects with their ``__path__`` and spec, whose ``__init__`` code has not run. The first access
to a name they do not hold yet (``mediapipe.Image``, ``vision.FaceDetector``, ``from
mediapipe.tasks.python import BaseOptions``, ...) runs all four ``__init__`` files, in the order a
plain ``import mediapipe`` completes them, so any other code in the process still sees the whole
of MediaPipe, only later. The modules imported are MediaPipe's own: the graphs and their outputs
are the same. Should the package's layout ever change, the plain import is used instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

#: The packages whose ``__init__`` is deferred, in the order a plain ``import mediapipe`` finishes
#: running them (``mediapipe/__init__.py`` rebinds ``mediapipe.tasks`` last).
_DEFERRED = ("mediapipe.tasks", "mediapipe.tasks.python.vision", "mediapipe.tasks.python", "mediapipe")
_lock = threading.RLock()
_state = {"completing": False, "done": False}


class _Names(types.SimpleNamespace):
    """The names facexpr uses, bound; any other name is looked up in the whole module."""

    def __init__(self, module: str, **names: Any) -> None:
        super().__init__(**names)
        self._module = module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(self.__dict__["_module"]), name)


def _complete() -> None:
    """Run the deferred ``__init__`` files (once; names looked up meanwhile import normally)."""
    with _lock:
        if _state["done"] or _state["completing"]:
            return
        _state["completing"] = True
        try:
            for name in _DEFERRED:
                module = sys.modules[name]
                module.__dict__.pop("__getattr__", None)
                module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]
        finally:
            _state["completing"], _state["done"] = False, True


def _deferred_package(name: str) -> types.ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package")
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__") or _state["completing"]:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        _complete()
        return getattr(module, attr)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def _register_deferred() -> bool:
    """Register the deferred packages unless MediaPipe is already (being) imported."""
    if "mediapipe" in sys.modules:
        return False
    chain = ("mediapipe", "mediapipe.tasks", "mediapipe.tasks.python", "mediapipe.tasks.python.vision")
    parent = None
    for name in chain:
        module = _deferred_package(name)
        sys.modules[name] = module
        if parent is not None:
            setattr(parent, name.rpartition(".")[2], module)
        parent = module
    return True


def face_landmarker_api() -> tuple[Any, Any, Any]:
    """``(mp, BaseOptions, vision)`` as ``import mediapipe as mp`` and ``from mediapipe.tasks.python
    import BaseOptions, vision`` give them, for the names facexpr uses (``mp.Image``,
    ``mp.ImageFormat``, ``vision.FaceLandmarker``, ``vision.FaceLandmarkerOptions``,
    ``vision.RunningMode``); other names are looked up in the whole package on first use."""
    with _lock:
        registered = False
        try:
            registered = _register_deferred()
            base = importlib.import_module("mediapipe.tasks.python.core.base_options")
            landmarker = importlib.import_module("mediapipe.tasks.python.vision.face_landmarker")
            image = importlib.import_module("mediapipe.tasks.python.vision.core.image")
            mode = importlib.import_module("mediapipe.tasks.python.vision.core.vision_task_running_mode")
        except (ImportError, AttributeError):
            if registered:  # a layout this module does not know: take the plain import
                for name in [m for m in sys.modules if m == "mediapipe" or m.startswith("mediapipe.")]:
                    del sys.modules[name]
                _state["done"] = True
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision

            return mp, BaseOptions, vision
    mp = _Names("mediapipe", Image=image.Image, ImageFormat=image.ImageFormat)
    vision = _Names("mediapipe.tasks.python.vision", FaceLandmarker=landmarker.FaceLandmarker,
                    FaceLandmarkerOptions=landmarker.FaceLandmarkerOptions,
                    RunningMode=mode.VisionTaskRunningMode)
    return mp, base.BaseOptions, vision
