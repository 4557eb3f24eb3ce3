"""``facexpr serve``: a local web page for editing photos.

:mod:`facexpr.web.workspace` holds what the server keeps (temp folder, analysed photos, models)
and is independent of the web framework; :mod:`facexpr.web.app` is the Gradio page on top of it.
Gradio is imported only by ``app``, so this package imports without it.
"""

from facexpr.web.workspace import Limits, Upload, Workspace

__all__ = ["Limits", "Upload", "Workspace"]
