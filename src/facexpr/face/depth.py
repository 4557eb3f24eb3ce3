"""Depth and surface-normal maps rendered from the MediaPipe face mesh.

StarGAN with depth guidance (seed 003) needs an RGB -> depth training target. A learned monocular
depth network is not available offline, but MediaPipe's 478-point mesh already carries a dense
z per vertex, so rasterising that mesh gives a face depth map and its normals for free and
deterministically. The rasteriser is plain vectorised numpy (no OpenGL), fast enough to run in
the data pipeline (a few ms at 128 px).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facexpr.errors import ConfigError

__all__ = ["mesh_triangles", "render_depth_normals", "DEPTH_FLOOR"]

#: Depth given to the farthest rendered face point; 0 is reserved for the background so a
#: model can tell "far face" from "no face".
DEPTH_FLOOR: float = 0.1


@lru_cache(maxsize=1)
def _tesselation() -> NDArray[np.int32]:
    """MediaPipe's 852 face-mesh triangles (cached: an immutable constant of the package).

    MediaPipe publishes the tesselation as an edge list in which each consecutive triple of
    edges closes one triangle. It leaves the eyes and the mouth opening as holes.
    """
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections

    edges = np.array(
        [(c.start, c.end) for c in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION],
        dtype=np.int32,
    )
    tri = edges.reshape(-1, 3, 2)
    if not np.all(tri[:, [1, 2, 0], 0] == tri[:, :, 1]):  # pragma: no cover - upstream change
        raise RuntimeError("MediaPipe's tesselation is no longer a list of edge triples")
    return np.ascontiguousarray(tri[:, :, 0])


def _boundary_loops(tri: NDArray[np.int32]) -> list[list[int]]:
    """Closed loops of edges used by exactly one triangle, longest (the face outline) first."""
    count: dict[tuple[int, int], int] = {}
    for a, b, c in tri.tolist():
        for e in ((a, b), (b, c), (c, a)):
            key = (min(e), max(e))
            count[key] = count.get(key, 0) + 1
    adj: dict[int, list[int]] = {}
    for (a, b), n in count.items():
        if n == 1:
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, []).append(a)
    loops: list[list[int]] = []
    seen: set[int] = set()
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], -1, start
        seen.add(start)
        while True:
            nxt = next(x for x in adj[cur] if x != prev)
            if nxt == start:
                break
            loop.append(nxt)
            seen.add(nxt)
            prev, cur = cur, nxt
        loops.append(loop)
    return sorted(loops, key=len, reverse=True)


@lru_cache(maxsize=1)
def _mesh() -> tuple[NDArray[np.int32], tuple[tuple[int, ...], ...]]:
    """Tesselation plus fans that close the eye and mouth holes.

    Each hole (every boundary loop except the face outline) is closed by a fan around one extra
    vertex, numbered 468, 469, ... in the order of the returned loops, placed at the loop's mean
    by the renderer. Without this the eyes and an open mouth would read as background (depth 0)
    inside the face.
    """
    tri = _tesselation()
    holes = tuple(tuple(loop) for loop in _boundary_loops(tri)[1:])
    fans = []
    for k, loop in enumerate(holes):
        centre = 468 + k
        fans += [(loop[i], loop[(i + 1) % len(loop)], centre) for i in range(len(loop))]
    out = np.ascontiguousarray(np.concatenate([tri, np.array(fans, np.int32)]))
    out.flags.writeable = False
    return out, holes


def mesh_triangles() -> NDArray[np.int32]:
    """(T, 3) triangles used by the renderer: MediaPipe's tesselation + hole-closing fans.

    Indices >= 468 are the hole centres (see :func:`render_depth_normals`); the iris points
    468-477 of the landmarker are not used.
    """
    return _mesh()[0]


#: How far behind the lips' mean the centre of an open mouth is placed, as a fraction of the
#: lip gap: the mouth reads as a shallow cavity instead of a flat membrane.
_MOUTH_DEPTH = 0.5


def _vertex_normals(v: NDArray[np.float64], tri: NDArray[np.int32]) -> NDArray[np.float64]:
    """Area-weighted vertex normals oriented toward the camera (negative z in mesh space)."""
    a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    fn = np.cross(b - a, c - a)
    # The tesselation's winding is not guaranteed to be consistent with our axes: orient every
    # face normal toward the camera (mesh z grows away from it).
    fn *= np.where(fn[:, 2:3] > 0, -1.0, 1.0)
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, tri[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.maximum(norm, 1e-12)


def render_depth_normals(
    landmarks: ArrayLike, size: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Rasterise the face mesh into a depth map and a surface-normal map.

    Args:
        landmarks: (478, 3) (or (468, 3)) in crop coordinates: x, y in pixels of the size x size
            crop, z in the same pixel scale, smaller z = closer to the camera.
        size: side of the square output.

    Returns:
        depth: (size, size) float32; 1 at the nearest face point, :data:`DEPTH_FLOOR` at the
            farthest rendered one, 0 on the background.
        normals: (size, size, 3) float32 unit vectors on the face (x right, y up, z toward the
            viewer, so a surface facing the camera is (0, 0, 1)), zeros on the background.
    """
    if int(size) != size or size < 2:
        raise ConfigError(f"depth map size must be an integer >= 2; got {size!r}")
    size = int(size)
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 3 or lm.shape[0] < 468:
        raise ConfigError(f"expected MediaPipe landmarks of shape (478, 3); got {lm.shape}")
    if not np.all(np.isfinite(lm[:468])):
        raise ConfigError("landmarks contain NaN or infinite values")

    tri, holes = _mesh()
    centres = np.array([lm[list(loop)].mean(axis=0) for loop in holes])
    for k, loop in enumerate(holes):
        if 13 in loop and 14 in loop:  # the inner-lip loop: push its centre back by the gap
            centres[k, 2] += _MOUTH_DEPTH * np.linalg.norm(lm[13, :2] - lm[14, :2])
    v = np.concatenate([lm[:468], centres])
    vn = _vertex_normals(v, tri)

    depth = np.zeros((size, size), np.float32)
    normals = np.zeros((size, size, 3), np.float32)

    # Per-triangle pixel bounding boxes (pixel centres at integer + 0.5), clipped to the crop.
    p = v[tri, :2] - 0.5  # (T, 3, 2) in pixel-index units
    lo = np.clip(np.ceil(p.min(axis=1)), 0, size).astype(np.int64)
    hi = np.clip(np.floor(p.max(axis=1)) + 1, 0, size).astype(np.int64)
    wh = np.maximum(hi - lo, 0)
    counts = wh[:, 0] * wh[:, 1]
    keep = counts > 0
    if not np.any(keep):
        return depth, normals
    tid = np.repeat(np.nonzero(keep)[0], counts[keep])
    # Position of each candidate inside its triangle's box.
    starts = np.cumsum(counts[keep]) - counts[keep]
    local = np.arange(tid.size) - np.repeat(starts, counts[keep])
    bw = wh[tid, 0]
    px = lo[tid, 0] + local % bw
    py = lo[tid, 1] + local // bw

    # Barycentric coordinates of the pixel centre.
    a, b, c = p[tid, 0], p[tid, 1], p[tid, 2]
    v0x, v0y = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    v1x, v1y = c[:, 0] - a[:, 0], c[:, 1] - a[:, 1]
    den = v0x * v1y - v1x * v0y
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    qx, qy = px - a[:, 0], py - a[:, 1]
    w1 = (qx * v1y - v1x * qy) / den
    w2 = (v0x * qy - qx * v0y) / den
    w0 = 1.0 - w1 - w2
    eps = -1e-9
    inside = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    if not np.any(inside):
        return depth, normals
    tid, px, py = tid[inside], px[inside], py[inside]
    w = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
    corners = tri[tid]
    z = np.einsum("nk,nk->n", w, v[corners, 2])

    # z-buffer: for every pixel keep the candidate with the smallest z (the nearest).
    pix = py * size + px
    order = np.lexsort((z, pix))
    pix_s = pix[order]
    first = np.ones(pix_s.size, bool)
    first[1:] = pix_s[1:] != pix_s[:-1]
    win = order[first]

    zw = z[win]
    zmin, zmax = float(zw.min()), float(zw.max())
    span = max(zmax - zmin, 1e-6)
    d = 1.0 - (1.0 - DEPTH_FLOOR) * (zw - zmin) / span
    n = np.einsum("nk,nkc->nc", w[win], vn[corners[win]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    # Mesh space is x right, y down, z away; report x right, y up, z toward the viewer.
    n[:, 1] *= -1.0
    n[:, 2] *= -1.0

    yy, xx = py[win], px[win]
    depth[yy, xx] = d
    normals[yy, xx] = n
    return depth, normals
