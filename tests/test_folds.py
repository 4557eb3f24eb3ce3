"""Softening a smile's own folds when an edit relaxes the smile (face.folds, pipeline.geometry).

Synthetic skin with a fold and a strand of hair, plus the shared 1024 px portraits (skipped with
a reason when absent).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facexpr.face.folds import soften_folds
from facexpr.imageio import load_image
from facexpr.pipeline import Editor
from facexpr.pipeline.targets import EmotionTarget

SKIN = np.array([205, 150, 128], np.float32)


def _skin_with_fold_and_strand() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 200 px square of skin with grain, a 6 px fold (skin at 0.65 of its light) and a 4 px
    strand of ashen brown hair; returns (image, fold mask, strand mask)."""
    rng = np.random.default_rng(0)
    img = np.tile(SKIN, (200, 200, 1)) + rng.normal(0, 2.0, (200, 200, 1))
    ys, xs = np.mgrid[0:200, 0:200]
    fold = np.abs(xs - 0.3 * ys - 60) < 3
    strand = np.abs(xs - 150) < 2
    img[fold] *= 0.65
    img[strand] = (92, 80, 74)
    return np.clip(img, 0, 255).astype(np.uint8), fold, strand


def test_a_fold_is_lifted_in_the_skins_own_colour_and_hair_is_left_alone() -> None:
    img, fold, strand = _skin_with_fold_and_strand()
    out = img.copy()
    changed = soften_folds(out, np.ones(img.shape[:2], np.float32), face_width=200.0, scale=0.06)
    assert changed is not None
    luma = np.array([0.299, 0.587, 0.114])
    skin = ~(fold | strand)
    skin_luma = float((img[skin] @ luma).mean())
    before = skin_luma - float((img[fold] @ luma).mean())
    after = skin_luma - float((out[fold] @ luma).mean())
    # (The surroundings' blur takes in the fold itself, so about a quarter of the deficit stays.)
    assert before > 40 and after < 0.35 * before, (before, after)
    # Lifted in the skin's colour: the fold's chromaticity is the skin's (not grey, not red).
    share = out[fold].astype(np.float64).sum(0) / out[fold].astype(np.float64).sum()
    assert np.allclose(share, SKIN / SKIN.sum(), atol=0.01), share
    # The strand of hair stays as it was; skin away from the fold barely moves.
    assert np.abs(out[strand].astype(int) - img[strand]).max() <= 2
    far = skin & (np.abs(np.mgrid[0:200, 0:200][1] - 0.3 * np.mgrid[0:200, 0:200][0] - 60) > 30)
    assert np.abs(out[far].astype(int) - img[far]).mean() < 1.0
    # The mask covers every pixel that changed.
    assert not np.any((out != img).any(axis=2) & ~changed)


def test_a_folds_own_red_goes_with_its_shadow() -> None:
    """A crease on skin is not a grey shadow: light scattered under the skin leaves it redder
    (a smile's fold on a 1024 px portrait, 142595: R, G, B at 0.60, 0.42, 0.33 of the skin around
    it). Lifted in luma alone, that red stayed: a relaxed smile kept its folds as orange lines."""
    img, fold, strand = _skin_with_fold_and_strand()
    img = img.astype(np.float32)
    img[fold] = img[fold] / 0.65 * np.array([0.60, 0.42, 0.33], np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    out = img.copy()
    assert soften_folds(out, np.ones(img.shape[:2], np.float32), face_width=200.0, scale=0.06) is not None
    red_share = lambda px: float(px[:, 0].astype(np.float64).sum() / px.astype(np.float64).sum())  # noqa: E731
    skin_red = float(SKIN[0] / SKIN.sum())
    assert red_share(img[fold]) - skin_red > 0.08  # (the crease as drawn)
    # (0.069 above the skin's before; the surroundings' blur takes in the fold itself, so its
    # tint is a little redder than the skin's.)
    assert abs(red_share(out[fold]) - skin_red) < 0.025, (red_share(out[fold]), skin_red)
    assert np.abs(out[strand].astype(int) - img[strand]).max() <= 2  # hair is still left alone


def test_black_hair_over_the_cheek_is_not_a_fold() -> None:
    """Black hair of a warm tint has skin's red share, so the red-share test takes it for skin;
    over a cheek the fold softening lifted it toward the skin's light, a grey-brown blur in the
    hair (048197 made neutral). Far darker than any crease against its surroundings, it stays.
    (Its edges, blurred with the skin beside them at the fold's fine scale, are still lifted
    partly, as a crease's would be.)"""
    rng = np.random.default_rng(1)
    img = np.tile(SKIN, (200, 200, 1)) + rng.normal(0, 2.0, (200, 200, 1))
    hair = np.zeros((200, 200), bool)
    hair[:, 60:76] = True  # a strand 16 px wide
    img[hair] = (30, 21, 19)  # red share 0.43: the skin's is 0.42
    img = np.clip(img, 0, 255).astype(np.uint8)
    out = img.copy()
    soften_folds(out, np.ones(img.shape[:2], np.float32), face_width=200.0, scale=0.06)
    middle = np.abs(out[:, 64:72].astype(int) - img[:, 64:72]).max()
    assert middle <= 2, middle  # (before: lifted by 92 levels)


def test_nothing_changes_where_the_weight_is_zero() -> None:
    img, _, _ = _skin_with_fold_and_strand()
    out = img.copy()
    weight = np.zeros(img.shape[:2], np.float32)
    assert soften_folds(out, weight, 200.0, 0.06) is None
    assert np.array_equal(out, img)
    weight[:, :100] = 1.0  # only the left half: the right half stays byte-identical
    assert soften_folds(out, weight, 200.0, 0.06) is not None
    assert np.array_equal(out[:, 100:], img[:, 100:])


@pytest.fixture(scope="module")
def editor():
    with Editor.from_pretrained() as ed:
        yield ed


def _edits(editor, img, target: str, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    from facexpr.pipeline import geometry as geo

    softened = editor.edit(img, EmotionTarget(target))
    with monkeypatch.context() as m:
        m.setattr(geo, "FOLD_SOFTENING", 0.0)
        plain = editor.edit(img, EmotionTarget(target))
    return softened, plain


def test_relaxing_a_smile_lightens_its_folds_below_the_nose_and_only_there(editor, portraits, monkeypatch) -> None:
    from facexpr.face.warp import OUTER_LIP

    img = load_image(portraits[0]).rgb  # a broad smile
    softened, plain = _edits(editor, img, "neutral", monkeypatch)
    diff = softened.astype(int) - plain.astype(int)
    changed = np.abs(diff).max(axis=2) > 0
    assert changed.sum() > 2000, int(changed.sum())
    # Lighter, never darker (beyond rounding).
    assert diff[changed].sum(axis=1).min() >= -3
    assert diff[changed].sum(axis=1).mean() > 3
    # Below the nose tip, beside the mouth, off the lips.
    lm = editor.faces(softened)[0].landmarks
    ys = np.nonzero(changed)[0]
    assert ys.min() >= lm[1, 1] - 0.05 * np.ptp(lm[:, 1])  # (the nose tip, give or take the head's roll)
    lips = np.zeros(changed.shape, np.uint8)
    cv2.fillPoly(lips, [np.round(lm[list(OUTER_LIP), :2]).astype(np.int32)], 1)
    lips = cv2.erode(lips, np.ones((15, 15), np.uint8)) > 0  # (the landmarker's corners on an edit wander)
    assert (changed & lips).sum() < 0.01 * changed.sum(), int((changed & lips).sum())


def test_a_face_that_does_not_smile_is_edited_as_before(editor, portraits, monkeypatch) -> None:
    img = load_image(portraits[1]).rgb  # a resting face (AU12 0)
    for target in ("sad", "neutral"):
        softened, plain = _edits(editor, img, target, monkeypatch)
        assert np.array_equal(softened, plain), target
