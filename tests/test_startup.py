"""What start-up leaves out stays equal to what it replaced: MediaPipe's face landmarker imported
without the package's ``__init__`` files (``face.mediapipe_api``), and the warp's SciPy-free
constants (the template rings' Delaunay triangles, the mesh neighbours)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

_LITE_THEN_FULL = """
import sys
import numpy as np
from facexpr.face.mediapipe_api import face_landmarker_api
mp, BaseOptions, vision = face_landmarker_api()
assert "matplotlib" not in sys.modules and "mediapipe.tasks.python.audio" not in sys.modules
from facexpr.face.detect import FaceAnalyzer
from facexpr.imageio import load_image
with FaceAnalyzer() as analyzer:
    faces = analyzer.analyze(load_image(sys.argv[1]).rgb)
np.save(sys.argv[2], np.stack([f.landmarks for f in faces] + [np.pad(f.blendshapes, (0, 478 * 3 - 52)).reshape(478, 3) for f in faces]))
# the rest of MediaPipe is still there for any other code, the same classes
import mediapipe
from mediapipe.tasks.python import BaseOptions as B, vision as V
assert mediapipe.Image is mp.Image and mediapipe.ImageFormat is mp.ImageFormat and B is BaseOptions
assert V.FaceLandmarker is vision.FaceLandmarker and V.RunningMode is vision.RunningMode
assert vision.FaceDetector is V.FaceDetector and V.drawing_utils is not None
assert "matplotlib" in sys.modules
print("ok")
"""

_FULL_FIRST = """
import sys
import numpy as np
import mediapipe
from mediapipe.tasks.python import vision
from facexpr.face.detect import FaceAnalyzer
from facexpr.imageio import load_image
with FaceAnalyzer() as analyzer:
    faces = analyzer.analyze(load_image(sys.argv[1]).rgb)
np.save(sys.argv[2], np.stack([f.landmarks for f in faces] + [np.pad(f.blendshapes, (0, 478 * 3 - 52)).reshape(478, 3) for f in faces]))
print("ok")
"""


def test_landmarker_without_mediapipes_package_init_finds_the_same_faces(misc, tmp_path):
    """The face landmarker imported alone gives the landmarks and blendshapes of a plain `import
    mediapipe` (on a photo with several faces), leaves matplotlib and the audio tasks unimported,
    and a later `import mediapipe` in the same process still gets the whole package."""
    photo = str(misc / "multi_face.jpg")
    results = []
    for k, script in enumerate((_LITE_THEN_FULL, _FULL_FIRST)):
        out = tmp_path / f"{k}.npy"
        proc = subprocess.run([sys.executable, "-c", script, photo, str(out)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
        results.append(np.load(out))
    assert len(results[0]) >= 4  # at least two faces
    np.testing.assert_array_equal(results[0], results[1])


def test_mesh_edges_give_each_vertex_its_sparse_adjacency():
    """The numpy edge list names the same neighbours as the sparse adjacency matrix it replaced."""
    from scipy import sparse

    from facexpr.face.depth import _tesselation
    from facexpr.face.warp import MESH_POINTS, _mesh_edges

    tri = _tesselation()
    i = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2], tri[:, 1], tri[:, 2], tri[:, 0]])
    j = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0], tri[:, 0], tri[:, 1], tri[:, 2]])
    adj = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(MESH_POINTS, MESH_POINTS)).tocsr()
    edge_from, edge_to = _mesh_edges()
    rng = np.random.default_rng(0)
    for idx in [np.array([0]), np.arange(MESH_POINTS)] + [np.unique(rng.integers(0, MESH_POINTS, 12)) for _ in range(20)]:
        np.testing.assert_array_equal(np.unique(edge_to[np.isin(edge_from, idx)]), np.unique(adj[idx].indices))
