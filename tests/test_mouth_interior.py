"""The drawn mouth interior (face.mouth_interior) on a synthetic open mouth: the outline of the
opening, the teeth's shape and enamel, and the lips' edge around the opening.

The mouth is the mean face's at 1024 px with the jaw dropped (the lower lip and everything below
the mouth corners moved down, most in the middle), drawn on a plain skin-coloured image.
"""

from __future__ import annotations

import numpy as np
import pytest

from facexpr.face.align import mean_face
from facexpr.face.mouth import LOWER_INNER_LIP, UPPER_INNER_LIP
from facexpr.face.mouth_interior import (
    DEFAULT_TEETH,
    MouthLook,
    draw_mouth_interior,
    lit_teeth,
    opening_curves,
    opening_polygon,
    shade_opening_edge,
    smooth_curve,
)
from facexpr.face.warp import OUTER_LIP

SKIN = (205, 150, 130)


def _mouth(opened: float, size: float = 1024.0) -> np.ndarray:
    """(478, 2) landmarks of a ``size`` px face whose mouth is open by ``opened`` of its width
    (in the middle; the mean face's own parting on top)."""
    lm = mean_face()[:, :2].astype(np.float64) * size
    left, right = lm[UPPER_INNER_LIP[0]], lm[UPPER_INNER_LIP[-1]]
    cx, cy, half = 0.5 * (left[0] + right[0]), 0.5 * (left[1] + right[1]), 0.5 * (right[0] - left[0])
    below = lm[:, 1] > cy + 1.0
    drop = 2.0 * opened * half * np.clip(1.0 - ((lm[:, 0] - cx) / (1.1 * half)) ** 2, 0.0, 1.0)
    lm[below, 1] += drop[below]
    return lm


@pytest.fixture(scope="module")
def open_mouth() -> np.ndarray:
    return _mouth(0.3)


def _draw(lm: np.ndarray, show: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    return draw_mouth_interior(image, lm, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, show))


def _teeth_edges(out: np.ndarray, lm: np.ndarray, darkest: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns across the middle of the mouth, the upper inner lip's height in each, and the
    lowest pixel of the upper teeth below it (unsaturated, brighter than ``darkest``, within
    a fifth of the mouth's width: no crown is longer; the teeth end where 6 pixels in a row are
    not: the cavity, not a thin gap, and the lower incisors' edges further down are not
    counted)."""
    upper = lm[list(UPPER_INNER_LIP)]
    left, right = upper[0], upper[-1]
    cx, half = 0.5 * (left[0] + right[0]), 0.5 * (right[0] - left[0])
    xs = np.arange(int(cx - 0.8 * half), int(cx + 0.8 * half))
    lip = np.interp(xs, upper[:, 0], upper[:, 1])
    rgb = out.astype(np.float32)
    tooth = (rgb.mean(axis=2) > darkest) & (rgb.max(axis=2) - rgb.min(axis=2) < 60)
    def upper_end(x: int, top: int) -> int:
        last, seen = top, False
        for y in range(top, min(top + int(0.2 * (right[0] - left[0])), out.shape[0])):
            if tooth[y, x]:
                last, seen = y, True
            elif seen and y - last > 6:
                break
        return last

    edges = np.array([upper_end(int(x), int(t)) for x, t in zip(xs, lip)], np.float64)
    return xs, lip, edges


def _opening_columns(lm: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel columns within ``reach`` of half the mouth's width from its middle, and the drawn
    opening's upper and lower edge in each (:func:`opening_curves`)."""
    upper, lower = opening_curves(lm)
    cx, half = float(upper[:, 0].mean()), 0.5 * float(np.ptp(upper[:, 0]))
    xs = np.arange(int(cx - reach * half), int(cx + reach * half))
    order = np.argsort(lower[:, 0])
    return xs, np.interp(xs, upper[:, 0], upper[:, 1]), np.interp(xs, lower[order, 0], lower[order, 1])


def test_the_opening_is_smooth_and_passes_through_the_lip_landmarks(open_mouth) -> None:
    for idx in (UPPER_INNER_LIP, LOWER_INNER_LIP):
        points = open_mouth[list(idx)]
        curve = smooth_curve(points, per_segment=8)
        np.testing.assert_allclose(curve[::8], points, atol=1e-9)  # every landmark on the curve
        # No overshoot: between two landmarks the curve stays within their box (grown by 1.5 px)
        for k in range(len(points) - 1):
            seg = curve[8 * k:8 * k + 9]
            lo, hi = np.minimum(points[k], points[k + 1]) - 1.5, np.maximum(points[k], points[k + 1]) + 1.5
            assert (seg >= lo).all() and (seg <= hi).all(), k
    poly = opening_polygon(open_mouth)
    turns = np.diff(np.unwrap(np.arctan2(*np.diff(poly, axis=0).T[::-1])))
    # A polygon of 20 landmarks turns by up to ~30 degrees at a vertex of a 1024 px opening;
    # the curve turns a few degrees per sample except at the two mouth corners.
    assert np.sort(np.abs(np.degrees(turns)))[-3] < 12.0


def test_drawn_teeth_have_rounded_edges_with_notches_between_them(open_mouth) -> None:
    out, weight = _draw(open_mouth)
    assert weight.max() == pytest.approx(1.0)
    xs, lip, edges = _teeth_edges(out, open_mouth, darkest=90)  # the gaps count, not the cavity
    length = edges - lip
    assert np.median(length) > 20  # crowns, not a sliver
    # The biting edge rises into a notch where two teeth meet: five across the middle of the
    # mouth (centrals, laterals, canines), each at least 15 % of a crown's length deep.
    middle = np.abs(xs - xs.mean()) < 0.65 * 0.5 * (xs[-1] - xs[0]) / 0.8
    notches = 0
    for i in np.flatnonzero(middle):
        win = length[i - 8:i + 9]
        if length[i] == win.min() and min(win[:8].max(), win[9:].max()) - length[i] > 0.15 * np.median(length):
            notches += 1
    assert notches >= 5, length.round()


def test_enamel_is_warmer_by_the_gum_than_down_the_tooth(open_mouth) -> None:
    out, _ = _draw(open_mouth)
    xs, lip, edges = _teeth_edges(out, open_mouth, darkest=150)
    length = edges - lip
    i = int(np.argmax(length))  # the middle of a central incisor
    x, top, crown = xs[i], lip[i], length[i]
    near_gum = out[int(top + 0.12 * crown), x].astype(np.float64)
    mid = out[int(top + 0.6 * crown), x].astype(np.float64)
    assert near_gum[2] / near_gum[0] < mid[2] / mid[0] - 0.02, (near_gum, mid)


def test_lips_darken_toward_a_drawn_opening_and_nothing_else_changes(open_mouth) -> None:
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    before = image.copy()
    mask = shade_opening_edge(image, open_mouth)
    assert mask is not None and mask.any()
    changed = (image != before).any(axis=2)
    assert not (changed & ~mask).any()
    # Straight up from the middle of the upper inner lip: just outside the opening the lip is
    # darker, halfway up to the outer lip barely, the skin above the lips not at all. The lower
    # lip keeps its light (real lower lips are 0.94-0.96 as bright by an opening as further out,
    # and the warp brings them their own darker edge).
    top_inner, top_outer = open_mouth[13], open_mouth[0]
    x = int(round(top_inner[0]))
    just_out = image[int(top_inner[1]) - 2, x].astype(np.float64)
    halfway = image[int(0.5 * (top_inner[1] + top_outer[1])), x].astype(np.float64)
    assert just_out.mean() < 0.9 * np.mean(SKIN)
    assert halfway.mean() > 0.96 * np.mean(SKIN)
    bottom_inner = open_mouth[14]
    assert image[int(bottom_inner[1]) + 2, int(round(bottom_inner[0]))].astype(np.float64).mean() > 0.99 * np.mean(SKIN)
    outer = open_mouth[list(OUTER_LIP)]
    assert not changed[: int(outer[:, 1].min()) - 2].any()


def test_teeth_glimpsed_in_the_lips_shadow_are_drawn_as_lit_enamel() -> None:
    lit = DEFAULT_TEETH * 0.95
    luma = np.array([0.299, 0.587, 0.114])
    # Lavender (lip light and shadow) becomes the default warm white; a dark ivory is brightened
    # but keeps its hue; a well-lit warm colour is kept as it is.
    lavender = lit_teeth(np.array([190.0, 178.0, 196.0], np.float32), lit)
    assert lavender[0] >= lavender[1] >= lavender[2]
    dark = np.array([150.0, 135.0, 110.0], np.float32)
    brighter = lit_teeth(dark, lit)
    assert brighter @ luma >= 0.85 * (lit @ luma) - 0.5
    np.testing.assert_allclose(brighter / brighter.sum(), dark / dark.sum(), atol=1e-6)
    warm = np.array([232.0, 220.0, 200.0], np.float32)
    np.testing.assert_array_equal(lit_teeth(warm, lit), warm)
    # No jump at neutral white: a hair more blue changes the colour by a hair.
    a, b = (lit_teeth(np.array([220.0, 218.0, v], np.float32), lit) for v in (217.9, 218.1))
    np.testing.assert_allclose(a, b, atol=1.0)


def test_a_closed_jaw_shows_the_lower_teeth_under_the_upper_ones() -> None:
    """Lips parted without the jaw dropping (a snarl, a grin): the lower teeth rise from the
    lower lip up to the upper ones; with the jaw dropped the opening there is the dark mouth."""
    open_mouth = _mouth(0.22)  # about an upper and a lower crown high
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    dropped, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=0.0))
    closed, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=1.0))
    xs, lip, edges = _teeth_edges(dropped, open_mouth, darkest=150)
    i = int(np.argmax(edges - lip))  # the middle of a central incisor
    x, below = xs[i], int(edges[i]) + 6  # just under the upper teeth's biting edge
    luma = lambda img: float(img[below:below + 6, x].astype(np.float64).mean())  # noqa: E731
    assert luma(dropped) < 70  # the cavity
    assert luma(closed) > 120  # a lower tooth
    assert luma(closed) < 0.95 * float(dropped[int(lip[i] + 0.6 * (edges[i] - lip[i])), x].astype(np.float64).mean())  # in the upper teeth's shadow
    # Half a bite: the lower teeth sink toward the lip (opaque, not a see-through blend).
    half, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=0.5))
    column = half[:, x].astype(np.float64).mean(axis=1)
    assert luma(half) < 70  # the cavity under the upper teeth again
    lower_teeth = np.flatnonzero(column[int(edges[i]) + 6:] > 120)
    assert len(lower_teeth) > 5  # whole, bright lower teeth further down


def test_a_closed_jaws_lower_teeth_run_up_behind_the_upper_ones() -> None:
    """Teeth together overlap (the upper incisors in front of the lower ones): right under the
    upper teeth's biting edges there is lower tooth, not a dark band of cavity between two rows
    (which read as dentures held apart; 93 % of the columns across the middle had one)."""
    open_mouth = _mouth(0.22)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    dropped, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=0.0))
    closed, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=1.0))
    xs, _, edges = _teeth_edges(dropped, open_mouth, darkest=150)
    luma = closed.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    darkest = np.array([luma[int(e) + 1:int(e) + 8, x].min() for x, e in zip(xs, edges)])
    assert len(xs) > 100
    assert (darkest < 70).mean() < 0.3, (darkest < 70).mean()  # (the notches between upper teeth)


def test_upper_teeth_held_where_the_photo_shows_them_end_at_their_edge() -> None:
    """A grin made into a snarl keeps the photo's upper teeth where they are (the jaw does not
    move); the drawing under them must end at their biting edge. Drawn to its own length, the
    upper crowns showed below the photo's as a second, grey row (angry on 142595, 048197)."""
    open_mouth = _mouth(0.3)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    look = MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=0.0)  # (no lower row: the cavity shows below)
    free, _ = draw_mouth_interior(image, open_mouth, look)
    xs, lip, edges = _teeth_edges(free, open_mouth, darkest=150)
    # The photo's teeth end 40 % of the way up the drawn crowns: a smooth edge across the mouth.
    held_y = lip + 0.6 * (edges - lip)
    held, _ = draw_mouth_interior(image, open_mouth, look, held_edge=np.stack([xs, held_y], axis=1))
    _, _, held_edges = _teeth_edges(held, open_mouth, darkest=150)
    middle = np.abs(xs - xs.mean()) < 0.5 * (xs[-1] - xs[0]) / 2
    assert np.median((edges - lip)[middle]) > 20  # crowns to cut
    # Every column's teeth end within 2 px of the held edge (the notches between crowns higher).
    assert (held_edges[middle] <= held_y[middle] + 2).all(), (held_edges - held_y)[middle].max()
    assert np.median(held_y[middle] - held_edges[middle]) < 2.5
    # ... and a closed jaw's lower teeth rise to it, not to where the drawn crowns would end.
    closed = MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=1.0)
    out, _ = draw_mouth_interior(image, open_mouth, closed, held_edge=np.stack([xs, held_y], axis=1))
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    darkest = np.array([luma[int(h) + 1:int(h) + 8, x].min() for x, h in zip(xs[middle], held_y[middle])])
    assert (darkest < 70).mean() < 0.3, (darkest < 70).mean()


def test_a_closed_jaw_parted_wider_than_both_rows_shows_gum_not_a_gap() -> None:
    """Lips parted further than an upper and a lower crown with the jaw closed (a bared snarl:
    the default's angry mouths open 0.27 of their width, some 0.35): the two rows of teeth still
    meet, and what is left shows as the lower gum above the lip. Each row drawn from its own lip,
    they were held apart by a dark band across the whole mouth: dentures held open."""
    lm = _mouth(0.4)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    out, _ = draw_mouth_interior(image, lm, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 0.83, bite=1.0))
    xs, top, bottom = _opening_columns(lm, 0.4)  # the incisors and canines
    rgb = out.astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    dark_runs, gum = [], []
    for x, t, b in zip(xs, top, bottom):
        inside = slice(int(t + 0.1 * (b - t)), int(b - 0.1 * (b - t)))  # off the rim's shadow
        dark_runs.append(int((luma[inside, x] < 70).sum()))
        column = rgb[inside, x]
        gum.append(bool(((column[:, 0] - column[:, 2] > 50) & (luma[inside, x] > 70)).sum() >= 3))
    assert len(xs) > 80
    assert np.mean(np.array(dark_runs) <= 2) > 0.9, np.percentile(dark_runs, [50, 90])
    assert np.mean(gum) > 0.8, np.mean(gum)


def test_a_closed_jaws_lower_teeth_are_about_as_bright_as_the_upper_ones() -> None:
    """In real openings that show both rows, the lower half of the opening is 0.93-1.02 as bright
    as the upper half across the middle of the mouth (75th percentile of luma, median 0.97).
    Drawn at 0.92 of the upper row's light before their shadows, the lower crowns of a closed
    jaw came out 0.87: a grey row under white teeth."""
    lm = _mouth(0.3)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    out, _ = draw_mouth_interior(image, lm, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0, bite=1.0))
    xs, top, bottom = _opening_columns(lm, 0.3)
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    halves = [np.concatenate([luma[int(t + a * (b - t)):int(t + z * (b - t)), x] for x, t, b in zip(xs, top, bottom)])
              for a, z in ((0.1, 0.45), (0.55, 0.9))]
    ratio = np.percentile(halves[1], 75) / np.percentile(halves[0], 75)
    assert 0.9 < ratio < 1.05, ratio  # (0.95; before 0.87)


def test_a_slit_toward_the_corners_shows_the_lips_in_shade_not_a_black_line() -> None:
    """Near the corners of real smiles (0.9 of the way from the middle, lips 0.036 mouth widths
    apart) the darkest pixel across the opening is 0.36 of the lips' luma; drawn as the cavity,
    a slit that thin was black (0.05 of the lips' here): a dark line from the teeth to each
    corner."""
    lm = _mouth(0.05)
    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    out, _ = draw_mouth_interior(image, lm, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 0.5))
    upper, lower = opening_curves(lm)
    order = np.argsort(lower[:, 0])
    cx, half = 0.5 * (upper[0, 0] + upper[-1, 0]), 0.5 * (upper[-1, 0] - upper[0, 0])
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    skin = float(np.array(SKIN) @ np.array([0.299, 0.587, 0.114]))
    for x in (cx - 0.9 * half, cx + 0.9 * half):
        top, bottom = np.interp(x, upper[:, 0], upper[:, 1]), np.interp(x, lower[order, 0], lower[order, 1])
        assert 0.02 < (bottom - top) / (2 * half) < 0.05  # a slit
        assert luma[int(top):int(bottom) + 2, int(x)].min() > 0.15 * skin  # (0.22; before 0.05)


def test_a_small_mouth_is_drawn_larger_and_averaged_down(monkeypatch) -> None:
    """On a 200 px face (a ~50 px mouth) gaps between teeth are a fraction of a pixel: drawn at
    the photo's size they were one-pixel black lines (a grille of teeth); drawn larger and
    averaged down they are faint, and the teeth keep their brightness."""
    import facexpr.face.mouth_interior as mouth_interior

    lm = _mouth(0.22, size=200.0)
    image = np.empty((200, 200, 3), np.uint8)
    image[...] = SKIN
    look = MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0)
    fine, weight = draw_mouth_interior(image, lm, look)
    monkeypatch.setattr(mouth_interior, "SUPERSAMPLE_BELOW", 0.0)
    coarse, weight0 = draw_mouth_interior(image, lm, look)
    assert abs(float(weight.sum()) - float(weight0.sum())) < 0.1 * float(weight0.sum())  # the same opening
    xs, lip, edges = _teeth_edges(coarse, lm, darkest=150)
    row = int(np.median(lip + 0.5 * (edges - lip)))  # across the middle of the upper teeth
    luma = lambda img: img[row, xs[0]:xs[-1]].astype(np.float64).mean(axis=1)  # noqa: E731
    dips = lambda values: float(np.median(values) - np.percentile(values, 10))  # noqa: E731  (the gaps)
    assert dips(luma(fine)) < 0.8 * dips(luma(coarse))
    assert np.abs(np.diff(luma(fine))).mean() < 0.8 * np.abs(np.diff(luma(coarse))).mean()
    assert abs(luma(fine).mean() - luma(coarse).mean()) < 0.1 * luma(coarse).mean()


def test_default_teeth_have_the_tint_of_real_teeth(portraits) -> None:
    """Teeth drawn for a photo that shows none have the colour balance of the teeth real photos
    show (measured on the shared portraits that show teeth, brightness aside): a cooler grey-white
    next to pink lips read as dentures."""
    from facexpr.face.mouth_interior import photo_teeth_colour
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor

    tints = []
    with Editor.from_pretrained(None) as editor:
        for path in portraits:
            image = load_image(path).rgb
            faces = editor.faces(image)
            colour = photo_teeth_colour(image, faces[0].landmarks) if faces else None
            if colour is not None:
                tints.append(colour / colour[0])
    assert len(tints) >= 6, f"only {len(tints)} of the portraits show teeth"
    low, high = np.percentile(tints, 25, axis=0), np.percentile(tints, 75, axis=0)
    default = DEFAULT_TEETH / DEFAULT_TEETH[0]
    assert np.all(default[1:] >= low[1:] - 0.01) and np.all(default[1:] <= high[1:] + 0.01), (default, low, high)


def test_a_dropped_jaw_shows_a_tongue_under_a_dark_palate_and_the_lower_teeth_edges() -> None:
    """A tall opening (a surprised jaw drop): dark at the top under the upper teeth, a pink
    tongue on its floor, and the lower incisors' biting edges over the lip in the middle; none
    of that toward the corners of a lower opening, nor a tongue in a low one."""
    tall = _mouth(0.45)
    out, _ = _draw(tall, show=0.2)
    upper, lower = tall[list(UPPER_INNER_LIP)], tall[list(LOWER_INNER_LIP)]
    cx = int(round(0.5 * (upper[0, 0] + upper[-1, 0])))
    top, bottom = float(np.interp(cx, upper[:, 0], upper[:, 1])), float(np.interp(cx, lower[::-1, 0], lower[::-1, 1]))
    column = out[:, cx].astype(np.float64)
    at = lambda f: column[int(top + f * (bottom - top))]  # noqa: E731
    palate, tongue = at(0.3), at(0.8)
    assert palate.mean() < 45, palate
    assert tongue.mean() > 1.8 * palate.mean() and tongue[0] > tongue[1] + 50, (palate, tongue)  # pink, lit
    edges = out[int(bottom) - 12:int(bottom) - 1, cx - 20:cx + 21].astype(np.float64)  # just above the lower lip
    enamel = (edges.mean(axis=2) > 150) & (edges.max(axis=2) - edges.min(axis=2) < 60)
    assert enamel.sum() > 40, edges.mean(axis=2).round()
    low, _ = _draw(_mouth(0.15), show=0.2)
    lower_low = _mouth(0.15)[list(LOWER_INNER_LIP)]
    bottom_low = float(np.interp(cx, lower_low[::-1, 0], lower_low[::-1, 1]))
    floor = low[int(bottom_low) - 20:int(bottom_low) - 10, cx].astype(np.float64)
    assert not (floor[:, 0] > floor[:, 1] + 50).any(), floor  # no tongue: the cavity or teeth edges


def test_a_dropped_jaws_lower_teeth_are_the_front_teeths_edges_each_its_own() -> None:
    """Over the lip of a dropped jaw only the front lower teeth show, their biting edges a few
    pixels high, each with its rounded corners (a notch of dark mouth between two): drawn out to
    the corners with the corners of whole crowns, they ran together into one pale band along the
    lower lip, a denture's rim."""
    tall = _mouth(0.45)
    out, _ = _draw(tall, show=0.2)
    upper, lower = tall[list(UPPER_INNER_LIP)], tall[list(LOWER_INNER_LIP)]
    left, right = upper[0, 0], upper[-1, 0]
    cx, half = 0.5 * (left + right), 0.5 * (right - left)
    order = np.argsort(lower[:, 0])
    luma = out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    def band(x: float) -> float:  # the brightest of the 10 px just above the lower lip
        bottom = float(np.interp(x, lower[order, 0], lower[order, 1]))
        return float(luma[int(bottom) - 10:int(bottom) - 1, int(round(x))].max())

    middle = np.array([band(x) for x in np.arange(cx - 0.3 * half, cx + 0.3 * half)])
    corners = np.array([band(x) for x in (cx - 0.65 * half, cx + 0.65 * half)])
    assert np.median(middle) > 150, np.median(middle)  # the incisors' edges
    assert (middle < 0.75 * np.median(middle)).sum() >= 2, middle.round()  # notches between them
    assert corners.max() < 110, corners  # no teeth toward the corners: lip shadow and cavity


def test_shown_teeth_are_the_pale_part_of_the_opening_not_lip_or_cavity(open_mouth) -> None:
    """``closed_lips.shown_teeth`` on a drawn open mouth between red lips: the teeth the drawing
    shows are found (their gaps closed in), the lips and the dark cavity under them are not."""
    import cv2

    from facexpr.face.closed_lips import opening_remnants, shown_teeth

    image = np.empty((1024, 1024, 3), np.uint8)
    image[...] = SKIN
    cv2.fillPoly(image, [np.round(open_mouth[list(OUTER_LIP)]).astype(np.int32)], (170, 60, 70))
    drawn, _ = draw_mouth_interior(image, open_mouth, MouthLook(DEFAULT_TEETH.copy(), 1.0, 0.0, 1.0))
    found = shown_teeth(drawn, opening_remnants(drawn, open_mouth))
    assert found is not None
    mask, (x0, y0) = found
    full = np.zeros(drawn.shape[:2], bool)
    full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
    luma = drawn.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    opening = np.zeros(drawn.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(opening_polygon(open_mouth)).astype(np.int32)], 1)  # as drawn
    inside = cv2.erode(opening, np.ones((5, 5), np.uint8)) > 0
    bright = inside & (luma > 170)  # the drawn teeth
    dark = inside & (luma < 60)  # the cavity
    lips = (cv2.dilate(opening, np.ones((9, 9), np.uint8)) > 0) & ~(opening > 0)
    assert full[bright].mean() > 0.9
    assert full[dark].mean() < 0.05
    assert full[lips].mean() < 0.01
