"""Head pose in a canonical face frame, and the full-resolution mesh warp.

The geometry-driven editor moves the face's own pixels instead of repainting them. Two pieces
of geometry make that work on any photo:

**Canonical frame.** Expression motion is learned and applied in a pose-normalised frame: the
3D template of :func:`facexpr.face.align.mean_face` (unit-square units, x right, y down, z away
from the camera). :func:`face_pose` fits a 3D similarity (Umeyama) from that template to a face's
landmarks on points expressions barely move (forehead, nose, eye corners, temples), so a motion
learned on frontal faces is rotated with the head before it is applied: on a turned head the far
cheek moves less in the image, instead of folding over.

**Mesh warp.** :func:`mesh_warp` is a backward warp of the photo, piecewise affine over a
Delaunay triangulation of the *target* landmarks (every target pixel maps to one source
position, so nothing tears), plus two rings of fixed points around the face so that an opening
jaw can push into the neck and the motion fades to zero beyond the face. The offsets are computed
on a coarse grid (a piecewise-linear field is exactly represented by linear interpolation except
along triangle edges) and upsampled, then the photo is resampled once with bicubic interpolation
at its own resolution: sharp at any size. Inside each eye the warp is rigid (irises and sclera
translate with the eye corners, never stretched), and pixels with zero motion are byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import FACE_OVAL, LEFT_EYE_IDX, RIGHT_EYE_IDX, copy_where, mean_face, smoothstep
from facexpr.face.eyes import EYES, contour
from facexpr.face.mouth import INNER_LIP, meeting_line

__all__ = [
    "STABLE_POINTS",
    "Pose",
    "face_pose",
    "umeyama_3d",
    "CoarseGrid",
    "WarpField",
    "face_grid",
    "polygon",
    "visibility",
    "mesh_warp_field",
    "apply_field",
    "interpolate_on_mesh",
]

#: Landmarks used for the pose fit: forehead, glabella, nose ridge and base, eye corners, temples
#: and outer brow ends -- points that expressions barely move.
STABLE_POINTS: tuple[int, ...] = (
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 2, 98, 327,
    33, 133, 362, 263, 127, 356, 234, 454, 70, 300,
)

#: Number of mesh landmarks (the iris points 468-477 are moved rigidly with the eyes).
MESH_POINTS = 468

#: Mesh point each iris landmark (468-472, then 473-477) moves with: its eye's inner corner.
IRIS_ANCHORS: tuple[int, ...] = (133,) * 5 + (362,) * 5

#: Two rings of fixed points around the face, out from its outline (:func:`face_outline`) by
#: these multiples of each outline point's distance from the face's centre, less 1: tight, so
#: hair, neck and background stay put where the outline does.
RING_SCALES: tuple[float, ...] = (1.05, 1.12)
#: Where the outline moves out, its rings move out ahead of it by this many times its motion
#: (along the outline's normal): the band ahead of a dropping chin, or of a far cheek a
#: frown pushes out, keeps at least half its width ((w + m) / (w + 2 m) for a motion m over a
#: band w wide), and an outline that stays or moves in leaves what lies beyond it alone. Fixed
#: rings 1.2 and 1.4 radii out below the jaw (room for the largest drop, a surprise's 0.17
#: radius) moved the neck under every edit: 0.85-1.5 % of each held-out portrait's pixels
#: changed outside both the photo's and the edited face.
RING_LEAD = 2.0


@dataclass(frozen=True)
class Pose:
    """Canonical template units -> landmark pixels: ``x_img = scale * R @ x_canonical + t``."""

    scale: float
    rotation: NDArray[np.float64]  # (3, 3)
    translation: NDArray[np.float64]  # (3,)

    def to_canonical(self, points: NDArray) -> NDArray[np.float64]:
        """(N, 3) landmark pixels -> canonical units."""
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale

    def motion_to_image(self, motion: NDArray) -> NDArray[np.float64]:
        """(N, 3) canonical displacements -> pixel displacements (rotation and scale only)."""
        return self.scale * (np.asarray(motion, np.float64) @ self.rotation.T)


@lru_cache(maxsize=1)
def template_normals() -> NDArray[np.float64]:
    """(468, 3) unit vertex normals of the template mesh, pointing toward the camera (-z).

    A constant of the template, computed once (read-only): every edit asks for it up to four
    times (the rig's visibility per target, the texture coordinates), ~0.3-3 ms each."""
    from facexpr.face.depth import _tesselation, _vertex_normals

    normals = _vertex_normals(mean_face()[:MESH_POINTS].astype(np.float64), _tesselation())
    normals.flags.writeable = False
    return normals


def visibility(pose: Pose, soft: float = 0.6) -> NDArray[np.float64]:
    """(468,) in 0..1: how squarely each mesh vertex faces the camera under ``pose``.

    Vertices on the far side of a turned head crowd onto the silhouette in the image; moving them
    there folds the mesh. Their motion is faded out by this factor (1 when the normal's component
    toward the camera is at least ``soft``).
    """
    n = template_normals() @ pose.rotation.T
    return np.clip(-n[:, 2] / soft, 0.0, 1.0)


def umeyama_3d(src: NDArray, dst: NDArray) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares 3D similarity src -> dst (scale, rotation, translation), reflection-guarded."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    r = u @ np.diag(d) @ vt
    var = (a**2).sum() / len(src)
    scale = float((s * d).sum() / var) if var > 0 else 1.0
    return scale, r, mu_d - scale * r @ mu_s


def face_pose(landmarks: NDArray) -> Pose:
    """Pose of a face: the 3D similarity from the canonical template to its landmarks."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[0] < MESH_POINTS or lm.shape[1] != 3:
        raise ValueError(f"expected (478, 3) MediaPipe landmarks, got shape {lm.shape}")
    template = mean_face().astype(np.float64)
    idx = list(STABLE_POINTS)
    scale, r, t = umeyama_3d(template[idx], lm[idx])
    return Pose(scale, r, t)


def signed_areas(points: NDArray, triangles: NDArray[np.int32]) -> NDArray[np.float64]:
    """Twice the signed area of each triangle of ``points`` (x, y); the sign is its orientation."""
    return _signed_areas_of(np.asarray(points, np.float64), (triangles[:, 0], triangles[:, 1], triangles[:, 2]))


@lru_cache(maxsize=1)
def _mesh_edges() -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """The 468 mesh vertices' neighbours from the tesselation, as directed edges (from, to): the
    neighbours of vertices ``idx`` are ``to[np.isin(from, idx)]`` (numpy alone: SciPy's sparse
    matrices cost ~0.2 s of start-up)."""
    from facexpr.face.depth import _tesselation

    tri = _tesselation()
    i = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2], tri[:, 1], tri[:, 2], tri[:, 0]])
    j = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0], tri[:, 0], tri[:, 1], tri[:, 2]])
    return i, j


#: MediaPipe's nose tip.
NOSE_TIP = 1


@lru_cache(maxsize=1)
def mirror_pairs() -> NDArray[np.int64]:
    """(478,) index of each template point's left-right mirror (nearest mirrored neighbour)."""
    t = mean_face().astype(np.float64)
    mirrored = t.copy()
    mirrored[:, 0] = 1.0 - t[:, 0]  # the template is centred: x = 0.5 is its axis
    d = ((mirrored[:, None, :2] - t[None, :, :2]) ** 2).sum(-1)
    out = d.argmin(axis=1)
    out.flags.writeable = False  # cached: shared by every caller
    return out


def unfold_evenly(source: NDArray, target: NDArray, carry: bool = False) -> NDArray[np.float64]:
    """:func:`unfold`, with each side of the lower face (below the nose tip) giving back as large
    a share of its motion as the other side does at the mirrored point, then unfolded again.

    Unfolding is a threshold: a triangle turns over or it does not. On a face a little turned or
    a little lopsided, one mouth corner's skin folded and gave back nine tenths of a smile's
    relaxing and the other side none (a mouth corner 13 px down on one side and 33 px on the
    other, a lopsided mouth, its lower lip drawn as if twisted). The motion a target asks for is
    symmetric; so is what the unfolding takes back of it now. ``carry`` is :func:`unfold`'s, for
    the first unfolding only: the second, of motion already made even, averages (carried, a
    fold left on one side kept one corner 45 px down and the other 27 px).
    """
    src = np.asarray(source, np.float64)
    placed = np.asarray(target, np.float64)
    first = unfold(src, placed, carry=carry)
    asked = (placed - src)[:MESH_POINTS, :2]
    kept = (first - src)[:MESH_POINTS, :2]
    norm2 = (asked ** 2).sum(axis=1)
    moving = norm2 > 1e-6
    share = np.ones(MESH_POINTS)
    share[moving] = np.clip((kept[moving] * asked[moving]).sum(axis=1) / norm2[moving], 0.0, 1.0)
    mirror = mirror_pairs()[:MESH_POINTS]
    # The mesh's own points below the nose tip: the eyes and brows have limits of their own.
    below = mean_face()[:MESH_POINTS, 1] > mean_face()[NOSE_TIP, 1]
    mirrored = (mirror < MESH_POINTS) & below
    even = share.copy()
    even[mirrored] = np.minimum(share[mirrored], share[mirror[mirrored]])
    if np.all(even >= share - 1e-3):
        return first
    out = first.copy()
    scale = np.where(share > 1e-6, even / np.maximum(share, 1e-6), 0.0)
    out[:MESH_POINTS] = src[:MESH_POINTS] + (first - src)[:MESH_POINTS] * scale[:, None]
    out = unfold(src, out)
    out[:MESH_POINTS][~below] = first[:MESH_POINTS][~below]  # (the eyes and brows as the first unfolding left them)
    return out


@lru_cache(maxsize=1)
def _below_nose_triangles() -> NDArray[np.bool_]:
    """(T,) the mesh triangles whose corners all lie below the nose tip (template frame): where
    :func:`unfold` may carry a fold along with its furthest-moving corner."""
    from facexpr.face.depth import _tesselation

    y = mean_face()[:MESH_POINTS, 1]
    out = (y[_tesselation()] > y[NOSE_TIP]).all(axis=1)
    out.flags.writeable = False  # cached: shared by every caller
    return out


def unfold(source: NDArray, target: NDArray, iterations: int = 40, carry: bool = False) -> NDArray[np.float64]:
    """``target`` with the motion around folded mesh triangles relaxed until none folds.

    A triangle of the face mesh that clearly has area in the photo must keep its orientation in
    the target; when strong, stacked motions (a brow pulled down onto a lid pushed up, a far
    cheek on a turned head, a laugh's thin upper lip relaxed) flip it, the warp would mirror the
    skin there. Each round, the vertices of flipped triangles move halfway toward the motion of
    the flipped triangles they belong to (a triangle that moves as one cannot flip; the fold
    opens without giving the motion back to the still skin around it, which would undo most of a
    relaxed smile); folds that survive half the rounds are shrunk with their neighbours until
    they open. Slivers (under a fifth of the median area, e.g. the far side of a turned head)
    are not constrained: their flips are invisible.

    ``carry=True`` lets a folded triangle below the nose tip move with the motion of its corner
    that moves furthest instead of the mean (:func:`_below_nose_triangles`; above the tip it
    keeps the mean): for a frown with the lips together (the caller decides:
    :func:`facexpr.pipeline.geometry.carries_folds`) the folds come from a mouth corner or a
    lip's edge pulled past the skin next to it, which the pull carries along. Averaged with that
    skin, a broad smile made sad kept an eighth of its frown (the mouth corners asked 66 px
    down, 8 px left) and still smiled.
    """
    tri, corner_of, edge_from, edge_to = _unfold_topology()
    src = np.asarray(source, np.float64)
    out = np.asarray(target, np.float64).copy()
    before = _signed_areas_of(src, corner_of)
    check = np.abs(before) > 0.05 * np.median(np.abs(before))
    carried = _below_nose_triangles() if carry else np.zeros(len(tri), bool)
    n = len(out)
    for rounds in range(iterations):
        flipped = check & (np.sign(_signed_areas_of(out, corner_of)) != np.sign(before))
        if not flipped.any():
            break
        corners = tri[flipped]
        idx = _members(corners.ravel(), n)  # (sorted, each once: np.unique without its sort)
        motion = out[:MESH_POINTS] - src[:MESH_POINTS]
        if rounds < iterations // 2:  # first let each folded triangle move as one...
            mean_motion = motion[corners].mean(axis=1)  # each flipped triangle's...
            lead = carried[flipped]  # ...or, carried, its furthest-moving corner's
            if lead.any():
                moving = motion[corners[lead]]
                furthest = np.einsum("tkc,tkc->tk", moving[..., :2], moving[..., :2]).argmax(axis=1)
                mean_motion[lead] = moving[np.arange(len(moving)), furthest]
            # Each vertex's sum over the flipped triangles it belongs to, corner by corner in
            # triangle order (bincount adds in the same order as np.add.at did, several times
            # faster).
            at = corners.T.ravel()
            spread = np.concatenate([mean_motion] * 3)
            total = np.stack([np.bincount(at, spread[:, c], len(motion)) for c in range(motion.shape[1])], axis=1)
            count = np.bincount(at, minlength=len(motion)).astype(np.float64)
            out[idx] = src[idx] + 0.5 * (motion[idx] + total[idx] / count[idx, None])
        else:  # ...then, where the motion around it keeps pushing, shrink it with its neighbours
            inside = np.zeros(n, bool)
            inside[idx] = True
            ring = _members(edge_to[inside[edge_from]], n)
            out[ring] = src[ring] + 0.9 * motion[ring]
            out[idx] = src[idx] + 0.7 * motion[idx]
    return out


@lru_cache(maxsize=1)
def _unfold_topology() -> tuple[NDArray[np.int32], tuple[NDArray[np.int32], ...], NDArray[np.int32], NDArray[np.int32]]:
    """The mesh triangles, their three corner columns (contiguous, for :func:`_signed_areas_of`)
    and the directed edges of :func:`_mesh_edges`."""
    from facexpr.face.depth import _tesselation

    tri = _tesselation()
    return tri, tuple(np.ascontiguousarray(tri[:, k]) for k in range(3)), *_mesh_edges()


def _signed_areas_of(points: NDArray[np.float64], corner_of: tuple[NDArray[np.int32], ...]) -> NDArray[np.float64]:
    """:func:`signed_areas` of float64 ``points`` (N, 2|3) with the triangles' corner columns
    (contiguous ones, gathered once, save :func:`unfold` a gather per round)."""
    x, y = points[:, 0], points[:, 1]
    i, j, k = corner_of
    ax, ay = x[i], y[i]
    return (x[j] - ax) * (y[k] - ay) - (y[j] - ay) * (x[k] - ax)


def _members(indices: NDArray, n: int) -> NDArray[np.intp]:
    """The distinct values of ``indices`` (all in 0..n-1), sorted: ``np.unique`` without sorting."""
    seen = np.zeros(n, bool)
    seen[indices] = True
    return np.flatnonzero(seen)


# -- piecewise-linear interpolation on a triangulation ---------------------------------------


def _triangles(points: NDArray[np.float64]) -> NDArray[np.int32]:
    from scipy.spatial import Delaunay

    return Delaunay(points).simplices.astype(np.int32)


def interpolate_on_mesh(
    points: NDArray,
    values: NDArray,
    shape: tuple[int, int],
    origin: tuple[float, float] = (0.0, 0.0),
    step: float = 1.0,
    triangles: NDArray[np.int32] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Piecewise-linear interpolation of per-point ``values`` (N, C) on a regular grid.

    Grid node (row i, column j) sits at pixel ``origin + step * (j, i)``. Triangles default to the
    Delaunay triangulation of ``points`` (N, 2). Returns the (H, W, C) field and the (H, W) mask
    of nodes inside the triangulation (outside: 0). Triangles are rasterised with OpenCV into a
    triangle-index map (later triangles overwrite earlier ones), then each node takes its
    triangle's affine interpolant: ~2 ms for a 160 x 160 grid and 900 triangles.
    """
    pts = np.asarray(points, np.float64)
    vals = np.asarray(values, np.float32)
    tri = _triangles(pts) if triangles is None else triangles
    h, w = shape
    channels = vals.shape[1]
    grid_pts = (pts - np.asarray(origin, np.float64)) / step  # in grid units
    ids = np.full((h, w), -1, np.int32)
    polys = np.round(grid_pts[tri] * 16).astype(np.int32)  # (T, 3, 2), 4 fractional bits
    v0, v1, v2 = polys[:, 0], polys[:, 1], polys[:, 2]  # (min/max over a length-3 axis is slow)
    lo, hi = np.minimum(np.minimum(v0, v1), v2) >> 4, np.maximum(np.maximum(v0, v1), v2) >> 4
    visible = np.nonzero((hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < w) & (lo[:, 1] < h))[0]
    for k, poly in zip(visible.tolist(), polys[visible]):  # only triangles that reach the grid
        cv2.fillConvexPoly(ids, poly, k, cv2.LINE_8, 4)  # (positional: ~25 % less call overhead)
    inside = ids >= 0
    if not inside.any():
        return np.zeros((h, w, channels), np.float32), inside
    # Per triangle, the interpolant is affine: value = M_t @ (x, y, 1). Solve all M_t at once,
    # then evaluate per node from rows gathered out of float32 tables (cheaper than per-node
    # barycentric weights, and than gathering the nodes inside first).
    present = np.zeros(len(tri) + 1, bool)  # the triangles that cover a node (np.unique sorts)
    present[ids + 1] = True
    used = np.nonzero(present[1:])[0]
    corners = grid_pts[tri[used]]  # (U, 3, 2)
    v = vals[tri[used]].astype(np.float64)  # (U, 3, C)
    # value(x, y) = a x + b y + c through the three vertices, in closed form (Cramer's rule; a
    # batched np.linalg.solve of 3 x 3 systems cost more than the rest of the function).
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]  # (U, 2)
    dv1, dv2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]  # (U, C)
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    ok = np.abs(det) > 1e-9
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)[:, None]
    m = np.empty((len(used), 3, channels))
    m[:, 0] = (dv1 * e2[:, 1:2] - dv2 * e1[:, 1:2]) * inv
    m[:, 1] = (dv2 * e1[:, 0:1] - dv1 * e2[:, 0:1]) * inv
    m[:, 2] = v[:, 0] - m[:, 0] * corners[:, 0, 0:1] - m[:, 1] * corners[:, 0, 1:2]
    m[~ok, 2] = v[~ok].mean(axis=1)  # a degenerate (collapsed) triangle: its mean value
    # Five tables, one row per used triangle: the interpolant's x, y and constant terms, then the
    # triangle's value range (a node rasterised just outside a thin, nearly degenerate triangle
    # would extrapolate far beyond its vertices' values: every value is kept within that range).
    # Row 0 is all zeros, for nodes outside every triangle.
    table = np.zeros((5, len(used) + 1, channels), np.float32)
    table[:3, 1:] = m.transpose(1, 0, 2)
    table[3, 1:] = v.min(axis=1)
    table[4, 1:] = v.max(axis=1)
    lookup = np.zeros(len(tri) + 1, np.int32)
    lookup[used + 1] = np.arange(1, len(used) + 1)
    row = lookup[ids + 1]
    xs = np.arange(w, dtype=np.float32)[None, :, None]
    ys = np.arange(h, dtype=np.float32)[:, None, None]
    # clip(x * a + y * b + c, low, high), each term gathered whole with np.take (several times
    # faster than fancy indexing into one (H, W, 5, C) array and computing on its strided views).
    out = np.take(table[0], row, axis=0)
    out *= xs
    out += np.take(table[1], row, axis=0) * ys
    out += np.take(table[2], row, axis=0)
    np.maximum(out, np.take(table[3], row, axis=0), out=out)
    np.minimum(out, np.take(table[4], row, axis=0), out=out)
    return out, inside


# -- the warp ----------------------------------------------------------------------------------


@dataclass
class CoarseGrid:
    """A regular grid over an image box: node (i, j) is pixel ``(x0 + j*step, y0 + i*step)``.

    Smooth fields (warp offsets, shading) are computed on its nodes and upsampled bilinearly to
    every pixel of ``box`` (x0, y0, x1, y1) with :meth:`upsample`.
    """

    box: tuple[int, int, int, int]
    step: float
    shape: tuple[int, int]

    @property
    def origin(self) -> tuple[float, float]:
        return float(self.box[0]), float(self.box[1])

    def upsample(self, coarse: NDArray[np.float32]) -> NDArray[np.float32]:
        x0, y0, x1, y1 = self.box
        hh, ww = y1 - y0, x1 - x0
        gh, gw = self.shape
        # cv2.resize maps output pixel u to input (u + 0.5) * gw / W - 0.5; choosing W = gw * step
        # puts node j exactly at pixel j * step + (step - 1) / 2, so shift by that half cell.
        full_w = int(round(gw * self.step))
        full_h = int(round(gh * self.step))
        up = cv2.resize(np.ascontiguousarray(coarse, dtype=np.float32), (full_w, full_h),
                        interpolation=cv2.INTER_LINEAR)
        shift = int(round((self.step - 1) / 2))
        out = up[shift:shift + hh, shift:shift + ww]
        if out.shape[:2] != (hh, ww):  # the last nodes fall short of the box edge: pad
            pad = ((0, hh - out.shape[0]), (0, ww - out.shape[1])) + ((0, 0),) * (out.ndim - 2)
            out = np.pad(out, pad, mode="edge")
        return out  # rows strided into the resized array: a copy here cost ~0.5 ms a face box

    def interpolate(self, points: NDArray, values: NDArray) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Piecewise-linear ``values`` at the nodes (see :func:`interpolate_on_mesh`)."""
        return interpolate_on_mesh(points, values, self.shape, self.origin, self.step)


@dataclass
class WarpField:
    """A backward warp of one image region: ``out[y, x] = image[y + dy, x + dx]`` in ``grid.box``.

    ``offsets`` is (H, W, 2) float32 at full resolution over the box; ``moved`` is the (H, W)
    bool mask of pixels the warp changes (elsewhere the offsets are 0 and the photo stays
    byte-identical; :func:`apply_field` resamples only around moved pixels).
    """

    grid: CoarseGrid
    offsets: NDArray[np.float32]
    moved: NDArray[np.bool_]
    extra: NDArray[np.float32] | None = None  #: coarse-node values of ``mesh_warp_field(extra=)``
    #: Pixels whose output blends the warped pixel with the photo's own: their rows and columns
    #: in the box and the warped pixel's share, 0-1 (the fade below a dropping chin,
    #: :func:`neck_under_chin`; where the share is 0 the pixel is not moved at all); None: none.
    blend: tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.grid.box


def face_outline(landmarks: NDArray) -> NDArray[np.int32]:
    """The mesh points on the face's outline in the photo: the convex hull of the 468 mesh
    points, in order around it. Mostly face-oval points; on a turned head the far side's outline
    is its cheek (the oval there lies behind it), and on a round face a few cheek points bulge
    past the oval beside the jaw."""
    pts = np.ascontiguousarray(np.asarray(landmarks, np.float64)[:MESH_POINTS, :2], np.float32)
    return cv2.convexHull(pts, returnPoints=False)[:, 0].astype(np.int32)


#: Skin moves toward the face's outline where that is the cheek (not the face oval) by at most
#: this share of its distance from it (relative to the outline's own motion there): the skin
#: between keeps at least half its width, as the band of hair and background beyond a moving
#: outline does (:data:`RING_LEAD`). On a head turned away, the far mouth corner sits close to
#: the cheek's edge, and a frown that widens the mouth (sadness, fear) pulled it to a sixth of
#: its distance from that edge, where the cheek folded into a curl of lip.
OUTLINE_KEEP = 0.5


def keep_inside_outline(landmarks: NDArray, motion: NDArray[np.float64], keep: float = OUTLINE_KEEP) -> None:
    """Limit, in place, the image ``motion`` (478, 2|3) of the mesh points inside the face's
    outline (:func:`face_outline` of ``landmarks``) toward it where the outline is not the face
    oval (a turned head's far cheek, a cheek bulging past the jaw): each point's motion along
    the normal of its nearest outline edge, beyond that edge's own motion there, to ``keep``
    times its distance from the edge, by shortening its motion across the face (along the
    normal where the edge itself runs across the face). Where the outline is the oval, the
    rings beyond it (:func:`ring_points`) give a moving jaw its room, and the skin inside moves
    with it."""
    inner, ends, along, dist, normal, cheek = _outline_edges(landmarks)
    edge_motion = motion[ends[:, 0], :2] + along[:, None] * (motion[ends[:, 1], :2] - motion[ends[:, 0], :2])
    toward = ((motion[inner, :2] - edge_motion) * normal).sum(1)
    over = np.maximum(toward - keep * dist, 0.0) * cheek
    # Held back across the face (along the line through the outer eye corners), where the edge
    # allows: a far mouth corner pulled down and out toward a slanting cheek edge still comes
    # down as far as the near one, and only its way out is shortened.
    lm = np.asarray(landmarks, np.float64)
    across = lm[_ACROSS[1], :2] - lm[_ACROSS[0], :2]
    across /= max(float(np.linalg.norm(across)), 1e-12)
    facing = normal @ across
    direction = np.where((np.abs(facing) >= 0.5)[:, None], across * np.sign(facing)[:, None], normal)
    motion[inner, :2] -= (over / np.maximum((direction * normal).sum(1), 1e-6))[:, None] * direction


#: The outer eye corners: the line across the face that :func:`keep_inside_outline` holds skin
#: back along.
_ACROSS = (33, 263)

#: The last face's :func:`_outline_edges`, keyed by its landmarks' bytes (one edit limits several
#: candidate motions of the same face). One entry, replaced whole.
_last_outline: tuple[bytes, tuple] | None = None


def _outline_edges(landmarks: NDArray) -> tuple[NDArray, ...]:
    """For the mesh points inside the face's outline: those points, and per point its nearest
    outline edge's two ends (mesh indices), where along it the nearest point lies
    (0..1), the distance to it, the edge's outward normal, and 1 where that edge is not the
    face oval's (else 0)."""
    global _last_outline
    pts = np.ascontiguousarray(np.asarray(landmarks, np.float64)[:MESH_POINTS, :2])
    key = pts.tobytes()
    last = _last_outline
    if last is not None and last[0] == key:
        return last[1]
    outline = face_outline(pts)
    nxt = np.roll(outline, -1)
    a = pts[outline]
    edge = pts[nxt] - a
    length2 = np.maximum((edge * edge).sum(1), 1e-12)
    normal = _edge_normals(a, pts.mean(0))
    inner = np.setdiff1d(np.arange(MESH_POINTS), outline)
    rel = pts[inner][:, None] - a[None]  # (P, edges, 2)
    t = np.clip((rel * edge[None]).sum(-1) / length2[None], 0.0, 1.0)
    off = rel - t[..., None] * edge[None]
    dist2 = (off * off).sum(-1)
    near = dist2.argmin(axis=1)
    rows = np.arange(len(inner))
    oval = np.zeros(MESH_POINTS, bool)
    oval[list(FACE_OVAL)] = True
    cheek = (~(oval[outline] & oval[nxt])).astype(np.float64)
    out = (inner, np.stack([outline[near], nxt[near]], axis=1), t[rows, near],
           np.sqrt(dist2[rows, near]), normal[near], cheek[near])
    _last_outline = (key, out)
    return out


def ring_points(landmarks: NDArray, target: NDArray | None = None,
                outline: NDArray[np.int32] | None = None) -> NDArray[np.float64]:
    """Fixed points around the face, two per point of the :func:`face_outline` (or ``outline``):
    out from it along the outline's outward normal by :data:`RING_SCALES` less 1 times its
    distance from the face oval's centre, first ring then second. With ``target`` (the
    landmarks' target positions) each also moves out ahead of its outline point by
    :data:`RING_LEAD` times that point's motion along the normal, where it moves out."""
    lm = np.asarray(landmarks, np.float64)
    idx = face_outline(lm) if outline is None else outline
    centre = lm[list(FACE_OVAL), :2].mean(0)
    rim = lm[idx, :2]
    normal = _outward_normals(rim, centre)
    radius = np.linalg.norm(rim - centre, axis=1)
    lead = np.zeros(len(idx))
    if target is not None:
        moved = np.asarray(target, np.float64)[idx, :2] - rim
        lead = RING_LEAD * np.maximum((moved * normal).sum(1), 0.0)
    return np.concatenate([rim + ((scale - 1.0) * radius + lead)[:, None] * normal for scale in RING_SCALES])


def _edge_normals(polygon: NDArray[np.float64], centre: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit outward normals of the edges of a convex ``polygon`` (N, 2) around ``centre`` (any
    point inside it): edge k runs from vertex k to vertex k + 1."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    perp = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-12)
    middles = polygon + 0.5 * edges
    return perp * np.where(((middles - centre) * perp).sum(1) < 0, -1.0, 1.0)[:, None]


def _outward_normals(polygon: NDArray[np.float64], centre: NDArray[np.float64],
                     edge_normals: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Unit outward normals at the vertices of a convex ``polygon`` (N, 2) around ``centre``:
    the mean of the two edges' normals (``edge_normals``, when the caller has them:
    :func:`_edge_normals`), so the offset polygon's strips never cross."""
    perp = _edge_normals(polygon, centre) if edge_normals is None else edge_normals
    normal = perp + np.roll(perp, 1, axis=0)  # vertex k: edges k - 1 and k
    return normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)


def ring_triangles(outline: NDArray[np.int32], first_ring: int) -> NDArray[np.int32]:
    """Triangles of the band between the face's outline and its two rings (:func:`ring_points`
    of the same ``outline``, numbered from ``first_ring``): a strip of two triangles per outline
    edge and ring, drawn before the mesh so the face's own triangles win where they overlap.

    Every ring point lies out along its outline point's outward normal (the mean of its two
    edges'), and the outline is convex, so the strips never cross. The band starts where the photo shows the
    face end: on a turned head, the far cheek's skin that the face oval does not reach is the
    mesh's and fades to still hair and background over the band, where rings around the oval
    (hidden behind that cheek) left the field to jump at the cheek's edge and tear it into
    steps."""
    n = len(outline)
    k = np.arange(n)
    j = (k + 1) % n
    inner, ring1, ring2 = outline.astype(np.int64), first_ring + k, first_ring + n + k
    quads = []
    for a, b in ((inner, ring1), (ring1, ring2)):
        quads.append(np.stack([a, a[j], b], axis=1))
        quads.append(np.stack([a[j], b[j], b], axis=1))
    return np.ascontiguousarray(np.concatenate(quads), dtype=np.int32)


def polygon(points: NDArray, idx: tuple[int, ...]) -> NDArray[np.float64]:
    """The points ``idx`` of ``points`` ordered by angle around their centre (a simple polygon
    for convex-ish contours such as an eye); :func:`facexpr.face.eyes.contour`."""
    return contour(points, idx)


@lru_cache(maxsize=1)
def warp_topology() -> tuple[NDArray[np.int32], tuple[tuple[int, ...], ...]]:
    """Fixed triangles of the warp mesh and the hole loops (mouth, eyes).

    Vertices: the 468 mesh landmarks, then one centre per hole (mouth, image-left eye, other eye:
    the fans that :func:`facexpr.face.depth.mesh_triangles` uses); the rings around the face
    follow them, with their own triangles (:func:`ring_triangles`). A fixed topology (MediaPipe's
    own tesselation) rather than a Delaunay triangulation of the moved points matters at the
    lips: when a target closes the mouth, its upper and lower inner-lip points meet, and a fresh
    triangulation would connect the upper lip to lower-lip points and sample the teeth in
    between.
    """
    from facexpr.face.depth import _mesh, _tesselation

    tri, holes = _mesh()
    faces = len(_tesselation())
    # Drawing order is priority (later triangles overwrite earlier ones): rings, then the hole fans,
    # then the real mesh. When a target closes the mouth, the fan of the collapsed opening can
    # still cover some lip pixels (the closed lip line is not straight); the lips must win there,
    # or the photo's teeth would be drawn over them.
    fans = np.asarray(tri[faces:], np.int32)
    base = np.asarray(tri[:faces], np.int32)
    out = np.ascontiguousarray(np.concatenate([fans, base]))
    out.flags.writeable = False
    return out, holes


def _mesh_vertices(landmarks: NDArray, holes: tuple[tuple[int, ...], ...]) -> NDArray[np.float64]:
    """The 468 mesh points plus one centre per hole, (468 + holes, 2)."""
    lm = np.asarray(landmarks, np.float64)[:MESH_POINTS, :2]
    centres = np.array([lm[list(h)].mean(0) for h in holes])
    return np.concatenate([lm, centres])


def face_grid(source: NDArray, target: NDArray, image_shape: tuple[int, ...], grid_cells: int,
              outline: NDArray[np.int32] | None = None) -> CoarseGrid | None:
    """The coarse grid covering the face and its fixed rings, ``grid_cells`` nodes across the face
    (``outline``: :func:`face_outline` of ``source``, when the caller has it)."""
    pts = np.concatenate([np.asarray(target, np.float64)[:MESH_POINTS, :2], ring_points(source, target, outline)])
    h_img, w_img = int(image_shape[0]), int(image_shape[1])
    x0 = max(int(math.floor(pts[:, 0].min())), 0)
    y0 = max(int(math.floor(pts[:, 1].min())), 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 1, w_img)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 1, h_img)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    face_w = float(np.ptp(np.asarray(target, np.float64)[:MESH_POINTS, 0]))
    step = max(face_w / grid_cells, 1.0)
    gw = int(math.ceil((x1 - 1 - x0) / step)) + 1
    gh = int(math.ceil((y1 - 1 - y0) / step)) + 1
    return CoarseGrid((x0, y0, x1, y1), step, (gh, gw))


#: How far (coarse grid cells, a sigma) :func:`mesh_warp_field` blurs the offsets inside the face:
#: enough to take out the bends at triangle edges that squeezed skin shows as a zigzag; more
#: (2.5) leaves a visible step where the blur ends at the face's edge.
FIELD_SMOOTHING = 1.5


def mesh_warp_field(
    source: NDArray,
    target: NDArray,
    image_shape: tuple[int, ...],
    grid_cells: int = 64,
    rigid_eyes: bool = True,
    min_offset: float = 0.2,
    extra: NDArray | None = None,
    stretch_eyes: bool = True,
    smoothing: float = FIELD_SMOOTHING,
    exact_lips: bool = True,
    facing: NDArray | None = None,
) -> WarpField | None:
    """The backward warp that moves landmarks ``source`` (478, 2|3) to ``target`` (same shape).

    Offsets are interpolated over the Delaunay triangulation of the target mesh points plus two
    fixed rings (:data:`RING_SCALES`) on a :class:`CoarseGrid`, then upsampled bilinearly to full
    resolution. Inside each target eye contour the offset is the mean offset of the eye's corners
    (a rigid eye). Offsets below ``min_offset`` px are dropped (invisible; it keeps the far ring
    byte-identical; 0.2 px is below what anyone can see). Returns None when nothing moves.

    ``extra`` (468, C) are more per-mesh-point values to interpolate on the same triangulation
    (e.g. texture coordinates); they are returned at the coarse nodes in ``WarpField.extra``
    (the rings get ``-1e4``, i.e. "outside", and nodes outside the mesh too).

    ``stretch_eyes=False`` keeps an eye that opens wider rigid too: the caller then paints what
    the raised lid uncovers (:mod:`facexpr.face.eyes`) instead of stretching the eye.

    ``smoothing`` (grid cells) blurs the offsets inside the face before the lips, brows and eyes
    are computed exactly (:func:`_smoothed_inside`); 0 keeps the piecewise-linear field.

    ``exact_lips=False`` leaves the lips to the (smoothed) coarse field: for lips that neither
    open nor close, whose field does not jump where they meet. Computed exactly, the lip field
    shows every fold the mesh keeps around the mouth (a mouth corner pulled down far beside lips
    that stay shut) as torn strips of lip; the coarse field smooths them out.

    ``facing`` (468,) is how squarely each mesh point faces the camera (:func:`visibility`): an
    eye turned away (the far eye of a turned head, :func:`turned_away`) keeps the smoothed coarse
    field around it instead of the exact one, and so does a mouth corner turned away
    (:func:`corners_turned_away`).
    """
    mesh, holes = warp_topology()
    src = _mesh_vertices(source, holes)
    dst = _mesh_vertices(target, holes)
    motion = src - dst  # backward offsets at the target positions
    if not np.any(np.abs(motion) > min_offset):
        return None
    outline = face_outline(source)
    grid = face_grid(source, target, image_shape, grid_cells, outline)
    if grid is None:
        return None
    ring = ring_points(source, target, outline)
    triangles = np.concatenate([ring_triangles(outline, len(src)), mesh])
    values = np.concatenate([motion, np.zeros_like(ring)])
    if extra is not None:
        ex = np.asarray(extra, np.float64)[:MESH_POINTS]
        ex = np.concatenate([ex, np.array([ex[list(h)].mean(0) for h in holes])])
        values = np.concatenate([values, np.concatenate([ex, np.full((len(ring), ex.shape[1]), -1e4)])], axis=1)
    both, inside = interpolate_on_mesh(np.concatenate([dst, ring]), values, grid.shape, grid.origin, grid.step,
                                       triangles=triangles)
    coarse = np.ascontiguousarray(both[..., :2])
    if smoothing > 0:
        coarse = _smoothed_inside(coarse, dst[list(FACE_OVAL)], grid, smoothing)
    extra_nodes = None
    if extra is not None:
        extra_nodes = np.ascontiguousarray(both[..., 2:])
        extra_nodes[~inside] = -1e4
    offsets = grid.upsample(coarse)
    face_w = float(np.ptp(dst[:MESH_POINTS, 0]))
    # Lips: every pixel (the upper and lower lip meet in a line); brows: 2 px on larger faces.
    regions = ((OUTER_LIP, 1.0),) if exact_lips else ()
    for region, step in regions + ((BROWS_AND_EYES, 2.0 if face_w > 200 else 1.0),):
        _exact_region(offsets, grid, np.concatenate([dst, ring]), np.concatenate([motion, np.zeros_like(ring)]),
                      triangles, dst, region, step, feather=smoothing > 0,
                      lip_smoothing=LIP_SMOOTHING * smoothing * grid.step if region is OUTER_LIP else 0.0,
                      turned=None if facing is None else
                      turned_away(facing) if region is BROWS_AND_EYES else corners_turned_away(facing))
    if rigid_eyes:
        x0, y0 = grid.box[0], grid.box[1]
        for eye in EYES:
            idx, corners, lids = eye.contour, eye.corners, eye.middles
            c_src, c_dst = src[list(corners)].mean(0), dst[list(corners)].mean(0)
            axis = src[corners[1]] - src[corners[0]]
            up = np.array([axis[1], -axis[0]]) / max(float(np.linalg.norm(axis)), 1e-9)
            h_src = float((src[lids[0]] - src[lids[1]]) @ up)
            h_dst = float((dst[lids[0]] - dst[lids[1]]) @ up)
            # An eye that opens wider is scaled along its vertical axis (a widening of at most
            # ~15 % keeps the iris round enough); one that closes stays rigid under its lids.
            scale = float(np.clip(h_dst / h_src, 1.0, 1.25)) if abs(h_src) > 1e-6 and stretch_eyes else 1.0
            _rigid_eye(offsets, polygon(dst, idx) - (x0, y0), c_src - c_dst, c_dst - (x0, y0), up, scale)
    moved = np.maximum(np.abs(offsets[..., 0]), np.abs(offsets[..., 1])) > min_offset
    blend = None
    cover = neck_under_chin(source, target, grid)
    if cover is not None:
        top, share = cover
        below = moved[top:]
        below &= share > 0.0
        ys, xs = np.nonzero(below & (share < 1.0))
        blend = (ys + top, xs, share[ys, xs])
    keep = moved.astype(np.float32)
    offsets *= cv2.merge([keep, keep])  # = offsets * moved[..., None], without numpy's broadcast (4x slower)
    return WarpField(grid, offsets, moved, extra_nodes, blend)


#: Below a chin that drops, the warped pixels give way to the photo's own from this far outside
#: the edited face's outline (a share of the face's width: the jaw's edge and the shadow under
#: it, which the chin carries down), over as far again.
CHIN_COVER = 0.015


def neck_under_chin(source: NDArray, target: NDArray, grid: CoarseGrid) -> tuple[int, NDArray[np.float32]] | None:
    """``(top, share)``: the share of the warped pixel in the output over ``grid.box``'s rows
    from ``top`` down (above them it is 1), 1 but below a chin that drops, where the neck stays
    as the photo has it; None where no chin drops.

    A dropping jaw moves the chin over the neck, which itself stays put. The fixed rings
    (:func:`ring_points`) fade the motion out over a band beyond the face's outline, so the neck
    under the chin followed it down, squeezed (0.65 % of each held-out portrait's pixels changed
    outside the photo's and the edited face for a surprise). Here, where the outline moves out
    toward the neck (within about 50 degrees of straight down from the face's centre), the
    output beyond :data:`CHIN_COVER` of the face's width outside the edited outline fades to
    the photo over the next as far: the neck the chin moved over is hidden, the rest keeps its
    place. (Squeezing that band into the margin instead of fading drew the jaw's shadow into a
    ragged line on the warp's coarse grid.) The share is worked out on the grid's nodes, as a
    linear function of the distance beyond the outline, and clipped after upsampling."""
    src = np.asarray(source, np.float64)[:MESH_POINTS, :2]
    dst = np.asarray(target, np.float64)[:MESH_POINTS, :2]
    down = dst[152] - dst[10]
    down /= max(float(np.linalg.norm(down)), 1e-9)
    centre = dst[list(FACE_OVAL)].mean(0)
    outline = face_outline(dst)
    rim = dst[outline]
    # How far each point of the edited face's outline lies out beyond the photo's same point,
    # along the outline's normal, and how squarely it faces down.
    edge_normal = _edge_normals(rim, centre)
    normal = _outward_normals(rim, centre, edge_normal)
    out = np.maximum(((rim - src[outline]) * normal).sum(1), 0.0)
    facing = ((rim - centre) @ down) / np.maximum(np.linalg.norm(rim - centre, axis=1), 1e-9)
    weight = np.clip((facing - 0.6) / 0.3, 0.0, 1.0) * np.clip(out - 0.5, 0.0, 1.0)
    if not weight.any():
        return None
    margin = max(CHIN_COVER * float(np.ptp(dst[:, 0])), 1.0)
    gh, gw = grid.shape
    nodes = np.stack(np.meshgrid(np.arange(gw) * grid.step + grid.origin[0],
                                 np.arange(gh) * grid.step + grid.origin[1]), axis=-1).reshape(-1, 2)
    # Each node takes the weight of the outline where it lies, by its direction from the centre.
    rim_angle = np.arctan2(*(rim - centre)[:, ::-1].T)
    order = np.argsort(rim_angle)
    there = np.interp(np.arctan2(*(nodes - centre)[:, ::-1].T), rim_angle[order], weight[order], period=2 * np.pi)
    # Beyond the convex outline: the largest signed distance past any of its edges' lines (0
    # inside; beside a vertex a little less than the distance to it, by the cosine of half the
    # angle its edges turn).
    near = np.flatnonzero(there > 0)
    beyond = np.maximum((nodes[near] @ edge_normal.T - (rim * edge_normal).sum(1)).max(1), 0.0)
    share = np.ones(len(nodes))
    share[near] = 1.0 - there[near] * (beyond - margin) / margin
    share = share.reshape(gh, gw)
    rows = np.flatnonzero((share < 1.0).any(axis=1))
    if len(rows) == 0:
        return None
    # The upsampling reaches a node's value one grid step above it.
    top = max(int(math.floor((rows[0] - 1) * grid.step)), 0)
    return top, np.clip(grid.upsample(share.astype(np.float32))[top:], 0.0, 1.0)


def _smoothed_inside(coarse: NDArray[np.float32], oval: NDArray[np.float64], grid: CoarseGrid,
                     sigma: float) -> NDArray[np.float32]:
    """``coarse`` offsets blurred by ``sigma`` grid cells inside the face ``oval`` (target
    pixels), fading to the unblurred field over the last ~``sigma / 2`` cells inside its edge.

    Piecewise-linear offsets bend at every triangle edge: where the warp squeezes skin (a smile's
    fold pushed back toward a relaxed mouth corner), a line that crosses the triangles turns into
    a zigzag. Blurring the field takes the bends out; outside the face the field stays as it was,
    so no motion spreads into hair or background.
    """
    inside = np.zeros(coarse.shape[:2], np.uint8)
    nodes = (oval - grid.origin) / grid.step
    cv2.fillPoly(inside, [np.round(nodes * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    weight = np.minimum(cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.5 * sigma) * 2.0, 1.0) * inside
    blurred = cv2.GaussianBlur(coarse, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return coarse + (blurred - coarse) * weight[..., None]


#: MediaPipe's outer lip contour (bounds the region where the warp is computed exactly).
OUTER_LIP: tuple[int, ...] = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)


#: Brows and eye contours: the band between them is squeezed when brows lower onto the lids.
BROWS_AND_EYES: tuple[int, ...] = tuple(i for e in EYES for i in e.brow_upper + e.brow_lower) + RIGHT_EYE_IDX + LEFT_EYE_IDX


def _exact_region(offsets: NDArray[np.float32], grid: CoarseGrid, points: NDArray, values: NDArray,
                  triangles: NDArray[np.int32], dst: NDArray, region: tuple[int, ...], step: float = 1.0,
                  feather: bool = False, lip_smoothing: float = 0.0,
                  turned: tuple[float, float] | None = None) -> None:
    """Recompute the offsets around the ``region`` landmarks at full resolution, in place.

    Where the field changes abruptly a coarse grid interpolates across the change and samples
    the wrong skin: where closing lips meet (the upper lip samples from above the photo's
    opening, the lower lip from below it: teeth in between), and in the thin band left between
    a lowered brow and the lid. These regions are small, so exact interpolation on a fine grid
    (``step`` px) there costs a few milliseconds.

    ``turned`` (with ``feather``): per side of :data:`EYES`, how far it is turned away (the eyes:
    :func:`turned_away`; the lips: :func:`corners_turned_away`); the exact field gives way to the
    coarse one by that much on that side of the face.
    """
    lips = np.asarray(dst, np.float64)[list(region)]
    pad = 0.15 * float(np.ptp(lips[:, 0]))
    x0 = max(int(np.floor(lips[:, 0].min() - pad)) - grid.box[0], 0)
    y0 = max(int(np.floor(lips[:, 1].min() - pad)) - grid.box[1], 0)
    x1 = min(int(np.ceil(lips[:, 0].max() + pad)) - grid.box[0], offsets.shape[1])
    y1 = min(int(np.ceil(lips[:, 1].max() + pad)) - grid.box[1], offsets.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    origin = (grid.box[0] + x0, grid.box[1] + y0)
    if step == 1.0:
        fine, inside = interpolate_on_mesh(points, values, (y1 - y0, x1 - x0), origin, 1.0, triangles=triangles)
    else:
        local = CoarseGrid((origin[0], origin[1], grid.box[0] + x1, grid.box[1] + y1), step,
                           (int(math.ceil((y1 - y0 - 1) / step)) + 1, int(math.ceil((x1 - x0 - 1) / step)) + 1))
        half, half_inside = interpolate_on_mesh(points, values, local.shape, local.origin, step, triangles=triangles)
        fine = local.upsample(half)
        inside = local.upsample(half_inside.astype(np.float32)) > 0.99
    if lip_smoothing > 0:
        _smooth_each_lip(fine, inside, np.asarray(dst, np.float64), (grid.box[0] + x0, grid.box[1] + y0), lip_smoothing)
    if not feather:
        copy_where(offsets[y0:y1, x0:x1], fine, inside)
        return
    # The exact field around the region's own outline only, fading into the (smoothed) coarse
    # field over the box's margin: replaced up to the box's edges, the box showed as a
    # rectangle where the two fields disagree (by pixels where the mesh folds beside a mouth
    # corner), tearing the skin along straight lines.
    weight = _near_region(np.asarray(dst, np.float64), region, (grid.box[0] + x0, grid.box[1] + y0),
                          (y1 - y0, x1 - x0), pad, step)
    weight[~inside] = 0.0
    if lip_smoothing > 0:  # (the lips: the brows and eyes have their own guards against folds)
        _leave_folds_smoothed(weight, points, values, triangles, (grid.box[0] + x0, grid.box[1] + y0))
    if turned is not None and max(turned) > 0:
        (_turn_corners_away if region is OUTER_LIP else _turn_away)(
            weight, np.asarray(dst, np.float64), turned, (grid.box[0] + x0, grid.box[1] + y0))
    box = offsets[y0:y1, x0:x1]
    # box += (fine - box) * weight, in OpenCV (numpy's broadcast over the channels is ~4x slower)
    box[...] = cv2.add(box, cv2.multiply(cv2.subtract(fine, box), cv2.merge([weight, weight])))


#: How much the exact lip field is blurred within each lip, as a share of the coarse field's
#: smoothing (``smoothing`` grid cells of ``grid.step`` pixels).
LIP_SMOOTHING = 0.5


def _smooth_each_lip(fine: NDArray[np.float32], inside: NDArray[np.bool_], dst: NDArray[np.float64],
                     origin: tuple[int, int], sigma: float) -> None:
    """Blur the exact lip field ``fine`` (box pixels at ``origin``) by ``sigma`` pixels on each
    side of the target's meeting line separately, in place (a normalised blur: each side's
    pixels only, so the jump where the lips part or meet stays sharp).

    The piecewise-affine field bends at every triangle edge; across a lip stretched and sheared
    by stacked motions (a smile relaxed while the jaw drops and the corners stretch) its
    texture showed a crease along one edge, a lower lip drawn as if twisted."""
    # Worked out around the lips only (the blur's reach beyond them), at half resolution: the
    # blurred field is smooth, and upsampled back it is the same to a few hundredths of a pixel.
    outer = dst[list(OUTER_LIP), :2] - origin
    reach = int(np.ceil(2.0 * sigma))
    h, w = fine.shape[:2]
    x0, y0 = max(int(outer[:, 0].min()) - reach, 0), max(int(outer[:, 1].min()) - reach, 0)
    x1, y1 = min(int(outer[:, 0].max()) + reach + 2, w), min(int(outer[:, 1].max()) + reach + 2, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return
    part, within = fine[y0:y1, x0:x1], inside[y0:y1, x0:x1]
    at = np.array([x0, y0], np.float64)
    line = meeting_line(dst) - origin - at
    # The upper side: the meeting line carried on along the mouth's axis past both corners,
    # closed on the nose's side (whatever way the face is turned in the photo).
    along = line[-1] - line[0]
    along /= max(float(np.linalg.norm(along)), 1e-9)
    up = np.array([along[1], -along[0]])
    if float((dst[NOSE_TIP, :2] - origin - at - line.mean(axis=0)) @ up) < 0:
        up = -up
    far = 2.0 * (h + w)
    outline = np.concatenate([[line[0] - far * along], line, [line[-1] + far * along],
                              [line[-1] + far * (along + up)], [line[0] + far * (up - along)]])
    shape = part.shape[:2]
    above = np.zeros(shape, np.uint8)
    cv2.fillPoly(above, [np.round(outline * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    # Only on the lips, fading in from their outline (beyond the corners the two sides' skin is
    # one, and the field stays continuous with the exact one around the lips).
    lips = np.zeros(shape, np.uint8)
    cv2.fillPoly(lips, [np.round((outer - at) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    t = np.clip(cv2.distanceTransform(lips, cv2.DIST_L2, cv2.DIST_MASK_5) / np.float32(max(0.5 * sigma, 1.0)), 0.0, 1.0)
    share = smoothstep(t)
    # Inside the target's opening (lips apart) the two sides are one: the field there is the
    # mouth's fan, continuous from one lip to the other, and it is smoothed whole. Split by the
    # meeting line, an opening that shows the photo's own teeth (warped, not drawn) had a seam
    # across them, a jagged line of lip colour through a snarl's teeth (195650 made angry); left
    # exact, those teeth showed the fan's bends (031796). Shut lips, or apart by a pixel or two,
    # have no opening left once it is eroded by a pixel.
    opening = np.zeros(shape, np.uint8)
    cv2.fillPoly(opening, [np.round((dst[list(INNER_LIP), :2] - origin - at) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    opening = cv2.erode(opening, np.ones((3, 3), np.uint8))
    whole = cv2.GaussianBlur(opening.astype(np.float32), (0, 0), 1.0) if opening.any() else None
    small = (max(shape[1] // 2, 1), max(shape[0] // 2, 1))
    full = (shape[1], shape[0])
    out = part.copy()
    sums = []  # each side's blurred (weights, weighted field): the whole's are their sums
    for side in (above > 0, above == 0):
        m = (side & within).astype(np.float32)
        if not m.any():
            continue
        den = cv2.GaussianBlur(cv2.resize(m, small, interpolation=cv2.INTER_AREA), (0, 0), 0.5 * sigma)
        num = cv2.GaussianBlur(cv2.resize(part * m[..., None], small, interpolation=cv2.INTER_AREA), (0, 0), 0.5 * sigma)
        smooth = cv2.resize(num / np.maximum(den, 1e-6)[..., None], full, interpolation=cv2.INTER_LINEAR)
        weight = share * m if whole is None else share * m * (1.0 - whole)
        out += (smooth - part) * weight[..., None]
        sums.append((den, num))
    if whole is not None and sums:
        den, num = sum(d for d, _ in sums), sum(n for _, n in sums)
        smooth = cv2.resize(num / np.maximum(den, 1e-6)[..., None], full, interpolation=cv2.INTER_LINEAR)
        out += (smooth - part) * (share * whole)[..., None]
    part[...] = out


#: How far (pixels) around a folded triangle the exact field gives way to the smoothed one.
FOLD_MARGIN = 3.0


def _leave_folds_smoothed(weight: NDArray[np.float32], points: NDArray, values: NDArray, triangles: NDArray[np.int32],
                          origin: tuple[int, int]) -> None:
    """Zero ``weight`` (the exact field's share, box pixels at ``origin``) on the triangles the
    target turns over (``points`` target positions, ``values`` backward offsets: their source
    positions are ``points + values``) and :data:`FOLD_MARGIN` around them, faded, in place.

    A mesh the unfolding leaves folded by a mouth corner (where stacked motions pull a corner
    down past the skin below it; thin triangles in the photo, which the unfolding does not
    check, turn over and grow) maps overlapping triangles onto one patch of skin: computed
    exactly, the later triangle's skin cuts straight across the earlier one's, a lower lip drawn
    twisted across itself. The smoothed coarse field is continuous there. (The fans that close
    the mouth and the eyes are left out: shut in the photo, a mouth's fan has no area to keep
    the orientation of, and where the lips part is where the exact field matters most.)"""
    pts = np.asarray(points, np.float64)[:, :2]
    source = pts + np.asarray(values, np.float64)[:, :2]
    before, after = signed_areas(source, triangles), signed_areas(pts, triangles)
    h, w = weight.shape
    corners = (pts[triangles] - origin)  # (T, 3, 2) box pixels
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    centres = (triangles >= MESH_POINTS) & (triangles < MESH_POINTS + len(warp_topology()[1]))
    folded = np.nonzero((np.sign(before) != np.sign(after)) & (np.abs(after) > 1.0) & ~centres.any(axis=1)
                        & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < w) & (lo[:, 1] < h))[0]
    if len(folded) == 0:
        return
    mask = np.zeros((h, w), np.uint8)
    for tri in corners[folded]:
        cv2.fillConvexPoly(mask, np.round(tri * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    # 0 on the folds and FOLD_MARGIN around them, back to 1 over the next FOLD_MARGIN (smoothly).
    dist = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    t = np.clip(dist / np.float32(FOLD_MARGIN) - 1.0, 0.0, 1.0)
    weight *= smoothstep(t)


#: An eye whose brow, lids and lid skin face the camera this squarely on average (mean
#: :func:`visibility`) or less is turned away fully, from the second value on not at all. The
#: far eye of the shared portraits' heads turned 25-32 degrees is at 0.83-0.87; every eye of a
#: head turned less than 10 degrees is at 0.93 or more.
TURNED_AWAY = (0.86, 0.92)


def turned_away(facing: NDArray) -> tuple[float, float]:
    """Per eye of :data:`EYES`, 0..1: how far it is turned away from the camera, from the mean
    ``facing`` (:func:`visibility`) of its brow, lid contour, lash band and lid fold.

    The far eye of a turned head is foreshortened: its outer corner, lid skin and brow tail crowd
    toward the silhouette in thin mesh triangles that an expression squeezes and turns over.
    Computed exactly there, the field showed every fold as torn skin (a brow's tail cut into
    dark fragments, lashes smeared into a blot at the outer corner); the smoothed coarse field is
    continuous."""
    parts = [eye.brow_upper + eye.brow_lower + eye.contour + eye.lash_band + eye.lid_fold for eye in EYES]
    return _turned(facing, parts, TURNED_AWAY)


def _turned(facing: NDArray, sides: list[tuple[int, ...]] | tuple[tuple[int, ...], ...],
            bounds: tuple[float, float]) -> tuple[float, float]:
    """Per side, 0..1: fully turned away at a mean ``facing`` of its points of ``bounds[0]`` or
    less, not at all from ``bounds[1]`` on (smoothly between)."""
    lo, hi = bounds
    seen = np.asarray(facing, np.float64)
    out = [float(smoothstep(np.clip((hi - float(seen[list(side)].mean())) / (hi - lo), 0.0, 1.0))) for side in sides]
    return out[0], out[1]


#: The mesh points around each mouth corner, the person's right (61) then left (291), the sides
#: of :data:`EYES`: the corner, the lips beside it and the skin around it.
MOUTH_CORNER_SIDES: tuple[tuple[int, ...], tuple[int, ...]] = (
    (61, 146, 91, 185, 40, 57, 43, 106, 202, 212, 214, 192, 207),
    (291, 375, 321, 409, 270, 287, 273, 335, 422, 432, 434, 416, 427),
)
#: :data:`TURNED_AWAY` for a mouth corner (mean :func:`visibility` of its side of
#: :data:`MOUTH_CORNER_SIDES`). The far corner of the shared portraits' heads turned 24-32
#: degrees is at 0.64-0.72, where the exact lip field tore the skin (its offsets jumped 8-29 px
#: between neighbouring pixels beside the corner: 083510, 030321, 145842, 064119 made happy);
#: of heads turned 18-21 degrees at 0.81-0.82, of every head turned less than 10 at 0.91 or more.
CORNER_TURNED_AWAY = (0.70, 0.80)


def corners_turned_away(facing: NDArray) -> tuple[float, float]:
    """Per side of :data:`EYES`, 0..1: how far that mouth corner is turned away from the camera,
    from the mean ``facing`` (:func:`visibility`) of its :data:`MOUTH_CORNER_SIDES`.

    The far mouth corner of a turned head crowds toward the silhouette like the far eye: computed
    exactly there, the lip field showed the folds of its thin triangles as torn skin (a jagged
    tear in 083510's beard beside a drawn smile, a chip cut out of 030321's upper lip); the
    smoothed coarse field is continuous."""
    return _turned(facing, MOUTH_CORNER_SIDES, CORNER_TURNED_AWAY)


def _turn_away(weight: NDArray[np.float32], dst: NDArray[np.float64], turned: tuple[float, float],
               origin: tuple[int, int]) -> None:
    """Scale ``weight`` (box pixels at ``origin``) by ``1 - turned[k]`` on eye ``k``'s side of the
    face (the side of the line across the eyes' midpoint, perpendicular to the line between the
    eyes' centres), in place."""
    centres = [dst[list(eye.contour), :2].mean(0) for eye in EYES]
    axis = centres[1] - centres[0]
    mid = 0.5 * (centres[0] + centres[1])
    h, w = weight.shape
    xs = np.arange(w, dtype=np.float32)[None, :] + np.float32(origin[0] - mid[0])
    ys = np.arange(h, dtype=np.float32)[:, None] + np.float32(origin[1] - mid[1])
    second = (xs * np.float32(axis[0]) + ys * np.float32(axis[1])) > 0  # on eye 1's side
    weight *= np.where(second, np.float32(1.0 - turned[1]), np.float32(1.0 - turned[0]))


#: Along the mouth (from its middle, in half mouth widths) where a turned-away corner's side
#: starts giving the exact field up, and how far on it has given it up as far as it is turned:
#: split at the face's middle like the eyes, the lips showed a seam down their middle where the
#: exact and the smoothed field meet.
CORNER_FADE = (0.2, 0.8)


def _turn_corners_away(weight: NDArray[np.float32], dst: NDArray[np.float64], turned: tuple[float, float],
                       origin: tuple[int, int]) -> None:
    """Scale ``weight`` (box pixels at ``origin``) toward ``1 - turned[k]`` along the mouth toward
    corner ``k`` (61, then 291: the sides of :data:`EYES`), from :data:`CORNER_FADE`'s first
    distance from the mouth's middle to its second, in place."""
    left, right = dst[MOUTH_CORNER_SIDES[0][0], :2], dst[MOUTH_CORNER_SIDES[1][0], :2]
    axis = right - left
    half = max(0.5 * float(np.linalg.norm(axis)), 1e-6)
    u = axis / (2.0 * half)
    mid = 0.5 * (left + right)
    h, w = weight.shape
    xs = np.arange(w, dtype=np.float32)[None, :] + np.float32(origin[0] - mid[0])
    ys = np.arange(h, dtype=np.float32)[:, None] + np.float32(origin[1] - mid[1])
    along = (xs * np.float32(u[0]) + ys * np.float32(u[1])) / np.float32(half)  # -1 at 61, 1 at 291
    start, end = CORNER_FADE
    give = np.zeros((h, w), np.float32)
    for k, sign in ((0, -1.0), (1, 1.0)):
        if turned[k] > 0:
            ramp = np.clip((np.float32(sign) * along - np.float32(start)) / np.float32(end - start), 0.0, 1.0)
            give = np.maximum(give, np.float32(turned[k]) * smoothstep(ramp))
    weight *= 1.0 - give


def _near_region(dst: NDArray[np.float64], region: tuple[int, ...], origin: tuple[int, int], shape: tuple[int, int],
                 pad: float, step: float = 1.0) -> NDArray[np.float32]:
    """(H, W) 1 on the convex hulls of the region's parts (the lips; each eye with its brow),
    grown by a third of ``pad``, fading to 0 over the next third (smoothly)."""
    parts = [region]
    if region == BROWS_AND_EYES:
        parts = [e.brow_upper + e.brow_lower + e.contour for e in EYES]
    k = max(int(step), 1)  # (worked out at the region's own grid step, enlarged back)
    small = (max(-(-shape[0] // k), 1), max(-(-shape[1] // k), 1))
    mask = np.zeros(small, np.uint8)
    for part in parts:
        hull = cv2.convexHull(np.round((dst[list(part), :2] - origin) * (16 / k)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, 4)
    grow = max(pad / 3 / k, 1.0)
    # Distance to the hulls (a distance transform: a wide dilation and blur cost 6 ms a face).
    dist = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    t = np.clip(2.0 - dist / np.float32(grow), 0.0, 1.0)  # 1 out to ``grow``, 0 from twice it
    weight = smoothstep(t)
    if k > 1:
        weight = cv2.resize(weight, (small[1] * k, small[0] * k), interpolation=cv2.INTER_LINEAR)[:shape[0], :shape[1]]
    return np.ascontiguousarray(weight)


def _rigid_eye(offsets: NDArray[np.float32], poly: NDArray[np.float64], rigid: NDArray,
               centre: NDArray | None = None, up: NDArray | None = None, scale: float = 1.0) -> None:
    """Inside the eye polygon (box pixels), blend the offsets to the eye's rigid motion, in place.

    Full resolution, with a 2 px feather inside the contour: a coarse-grid mask would let the eye
    interior leak across the lid line (iris showing above a lowered lid). With ``scale`` > 1 the
    eye is also stretched by that factor along ``up`` about ``centre`` (an eye opened wider).
    """
    x0, y0 = np.floor(poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = offsets.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    weight = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(np.float32) / 255.0
    weight = cv2.GaussianBlur(weight, (0, 0), 0.8)[..., None] * (mask[..., None] > 0)
    sub = offsets[y0:y1, x0:x1]
    want = np.broadcast_to(np.asarray(rigid, np.float32)[None, None, :], sub.shape).copy()
    if scale != 1.0 and centre is not None and up is not None:
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        along = (xs - centre[0]) * up[0] + (ys - centre[1]) * up[1]
        want += ((1.0 / scale - 1.0) * along)[..., None] * np.asarray(up, np.float32)[None, None, :]
    sub += weight * (want - sub)


#: Rows of the box resampled at once by :func:`apply_field` (each band only as wide as its moved pixels).
APPLY_BAND = 32


def apply_field(image: NDArray[np.uint8], field: WarpField, interpolation: int = cv2.INTER_CUBIC) -> NDArray[np.uint8]:
    """The warped ``field.box`` region of ``image``, (H, W, C) of the image's dtype.

    Sampling positions with zero offset fall exactly on pixel centres, where bicubic
    interpolation returns the pixel itself: unmoved pixels come back unchanged. So only the
    moved pixels are resampled: the box is copied, then each band of :data:`APPLY_BAND` rows is
    resampled between its first and last moved column (the box's corners around the face oval
    are still: ~20 % less to resample, the same bytes).
    """
    x0, y0, x1, y1 = field.box
    src = np.ascontiguousarray(image)
    out = src[y0:y1, x0:x1].copy()
    for top in range(0, y1 - y0, APPLY_BAND):
        rows = slice(top, min(top + APPLY_BAND, y1 - y0))
        cols = np.flatnonzero(field.moved[rows].any(axis=0))
        if len(cols) == 0:
            continue
        left, right = int(cols[0]), int(cols[-1]) + 1
        offsets = field.offsets[rows, left:right]
        map_x = np.arange(x0 + left, x0 + right, dtype=np.float32)[None, :] + offsets[..., 0]
        map_y = np.arange(y0 + rows.start, y0 + rows.stop, dtype=np.float32)[:, None] + offsets[..., 1]
        out[rows, left:right] = cv2.remap(src, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT_101)
    if field.blend is not None:  # the photo's own pixels show through where the warp gives way
        ys, xs, share = field.blend
        k = share[:, None]
        photo = src[y0 + ys, x0 + xs].astype(np.float32)
        out[ys, xs] = np.clip(k * out[ys, xs] + (1.0 - k) * photo + 0.5, 0, 255).astype(out.dtype)
    return out
