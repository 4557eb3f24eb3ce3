"""AU names, emotion prototypes, --au parsing and interpolation (synthetic, no data needed)."""

from __future__ import annotations

import numpy as np
import pytest

from facexpr.errors import ConfigError
from facexpr.expression import (
    AU_FACS,
    AU_IDS,
    AU_NAMES,
    AU_RANGE,
    EMOTION_ALIASES,
    EMOTIONS,
    AUSpec,
    OUTER_BROW_ALONE,
    apply_au_specs,
    brow_shape,
    emotion_aus,
    interpolate,
    lid_shape,
    parse_au,
)


def test_au_tables_are_consistent() -> None:
    assert AU_IDS == (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
    assert AU_NAMES[0] == "AU01" and AU_NAMES[-1] == "AU45" and AU_NAMES[8] == "AU12"
    assert len(AU_NAMES) == len(AU_FACS) == 17
    assert AU_FACS[0] == "Inner Brow Raiser" and AU_FACS[8] == "Lip Corner Puller"
    assert AU_RANGE == (0.0, 5.0)


def test_prototypes_follow_emfacs() -> None:
    assert set(EMOTIONS) == {
        "neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted", "contempt"
    }
    for vec in EMOTIONS.values():
        assert vec.shape == (17,) and vec.dtype == np.float32
        assert np.all((vec >= 0) & (vec <= 5))
        with pytest.raises(ValueError):
            vec[0] = 1.0  # shared constants are read-only
    idx = {n: i for i, n in enumerate(AU_NAMES)}
    on = lambda emo, *aus: all(EMOTIONS[emo][idx[a]] > 0 for a in aus)  # noqa: E731
    assert not EMOTIONS["neutral"].any()
    assert on("happy", "AU06", "AU12")
    assert on("sad", "AU01", "AU04", "AU15")
    assert on("surprised", "AU01", "AU02", "AU05", "AU26")
    assert on("fearful", "AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26")
    assert on("angry", "AU04", "AU05", "AU07", "AU10", "AU25")
    assert on("disgusted", "AU04", "AU07", "AU09", "AU10")
    assert EMOTIONS["disgusted"][idx["AU15"]] == 0  # the frown is sadness's
    assert on("contempt", "AU12", "AU14")
    assert EMOTIONS["happy"][idx["AU15"]] == 0


def test_emotion_aus_moves_from_source_to_prototype() -> None:
    smile = EMOTIONS["happy"].copy()
    assert np.allclose(emotion_aus("sad", 0.0, smile), smile)
    assert np.allclose(emotion_aus("sad", 1.0, smile), EMOTIONS["sad"])
    half = emotion_aus("sad", 0.5, smile)
    au12 = AU_NAMES.index("AU12")
    # The smile relaxes proportionally while the sad AUs rise.
    assert np.isclose(half[au12], 0.5 * smile[au12])
    assert np.isclose(half[AU_NAMES.index("AU15")], 0.5 * EMOTIONS["sad"][AU_NAMES.index("AU15")])
    assert np.allclose(emotion_aus("happy", 1.0), EMOTIONS["happy"])  # no source = neutral
    batch = emotion_aus("anger", 0.3, np.zeros((4, 17)))
    assert batch.shape == (4, 17) and batch.dtype == np.float32


def test_anger_and_sadness_lower_the_brows_from_where_they_rest() -> None:
    au04 = AU_NAMES.index("AU04")
    frowning = np.zeros(17, np.float32)
    frowning[au04] = 3.0  # how the landmarker reads low-set brows at rest
    assert emotion_aus("angry", 1.0, frowning)[au04] == 5.0  # 3 + 3.5, clipped to the scale
    assert emotion_aus("sad", 1.0, frowning)[au04] == pytest.approx(4.0)
    assert emotion_aus("angry", 0.5, frowning)[au04] == pytest.approx(3.0 + 0.5 * 3.5)
    assert emotion_aus("angry", 0.0, frowning)[au04] == 3.0
    # from a face that reads no frown, the prototype's own level, as before
    assert emotion_aus("angry", 1.0)[au04] == EMOTIONS["angry"][au04]
    # other emotions still move AU04 to their level
    assert emotion_aus("fearful", 1.0, frowning)[au04] == EMOTIONS["fearful"][au04]
    assert emotion_aus("happy", 1.0, frowning)[au04] == 0.0


def test_arched_brows_are_kept_not_relaxed() -> None:
    """An outer-brow raise (AU02) far above the inner one (AU01) is the brows' shape: every
    emotion keeps it, relaxing only what a real raise reads; brows raised together relax fully."""
    au01, au02 = AU_NAMES.index("AU01"), AU_NAMES.index("AU02")
    arched = np.zeros(17, np.float32)
    arched[au02], arched[AU_NAMES.index("AU12")] = 5.0, 4.0  # a smile under high-arched brows
    assert np.isclose(brow_shape(arched), 5.0 - OUTER_BROW_ALONE)
    neutral = emotion_aus("neutral", 1.0, arched)
    assert np.isclose(neutral[au02], 5.0 - OUTER_BROW_ALONE) and neutral[AU_NAMES.index("AU12")] == 0
    assert np.allclose(emotion_aus("neutral", 0.0, arched), arched)
    assert emotion_aus("sad", 1.0, arched)[au02] >= neutral[au02]
    assert emotion_aus("surprised", 1.0, arched)[au02] == 5.0  # never lowered by a raise
    raised = np.zeros(17, np.float32)
    raised[au01], raised[au02] = 3.0, 3.5  # brows raised together: an expression
    assert brow_shape(raised) == 0.0 and not emotion_aus("neutral", 1.0, raised).any()
    batch = emotion_aus("neutral", 1.0, np.stack([arched, raised]))
    assert np.allclose(batch[:, au02], [5.0 - OUTER_BROW_ALONE, 0.0])


@pytest.mark.parametrize("alias,name", [("surprise", "surprised"), ("anger", "angry"),
                                        ("disgust", "disgusted"), ("fear", "fearful"),
                                        ("happiness", "happy"), ("Sadness", "sad")])
def test_aliases(alias: str, name: str) -> None:
    assert np.array_equal(emotion_aus(alias, 1.0), EMOTIONS[name])
    assert EMOTION_ALIASES.get(alias.lower()) == name


def test_emotion_errors_are_actionable() -> None:
    with pytest.raises(ConfigError, match="unknown emotion 'joyful'.*happy.*surprised"):
        emotion_aus("joyful", 1.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            emotion_aus("happy", bad)
    with pytest.raises(ConfigError, match="17 Action Unit values"):
        emotion_aus("happy", 0.5, np.zeros(12))


@pytest.mark.parametrize(
    "spec,name,value,delta",
    [("AU12=3.5", "AU12", 3.5, False), ("au12=3.5", "AU12", 3.5, False),
     ("12=3.5", "AU12", 3.5, False), ("AU6=2", "AU06", 2.0, False),
     ("AU12+=1", "AU12", 1.0, True), ("AU12-=0.5", "AU12", -0.5, True),
     (" AU45 = 0 ", "AU45", 0.0, False), ("AU01=5", "AU01", 5.0, False)],
)
def test_parse_au(spec: str, name: str, value: float, delta: bool) -> None:
    s = parse_au(spec)
    assert isinstance(s, AUSpec)
    assert (s.name, s.value, s.delta) == (name, value, delta)
    assert AU_NAMES[s.index] == name
    assert parse_au(str(s)) == s  # round-trips


@pytest.mark.parametrize(
    "spec,message",
    [("AU3=1", "unknown Action Unit.*AU01.*AU45"), ("AU12=6", "between 0 and 5"),
     ("AU12=-1", "between 0 and 5"), ("AU12", "AU=VALUE"), ("AU12=abc", "not a number"),
     ("AU12+=9", "exceeds"), ("smile=2", "AU=VALUE|unknown Action Unit"), ("AU12=inf", "finite")],
)
def test_parse_au_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_au(spec)


def test_apply_au_specs_in_order_and_clipped() -> None:
    src = np.full(17, 1.0, np.float32)
    out = apply_au_specs(src, ["AU12=2", "AU12+=1", "AU04-=3", parse_au("AU45=4")])
    assert out[AU_NAMES.index("AU12")] == 3.0
    assert out[AU_NAMES.index("AU04")] == 0.0  # clipped at the bottom of the range
    assert out[AU_NAMES.index("AU45")] == 4.0
    assert out[AU_NAMES.index("AU01")] == 1.0 and src[AU_NAMES.index("AU12")] == 1.0
    assert apply_au_specs(np.zeros((3, 17)), ["AU26+=5", "AU26+=5"]).max() == 5.0


def test_interpolate() -> None:
    a, b = np.zeros(17), EMOTIONS["surprised"]
    assert np.allclose(interpolate(a, b, 0.0), a) and np.allclose(interpolate(a, b, 1), b)
    seq = interpolate(a, b, np.linspace(0, 1, 5))
    assert seq.shape == (5, 17) and seq.dtype == np.float32
    assert np.allclose(seq[2], 0.5 * b)
    assert np.all(np.diff(seq[:, AU_NAMES.index("AU26")]) > 0)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        interpolate(a, b, 1.2)
    with pytest.raises(ConfigError, match="differ in shape"):
        interpolate(a, np.zeros((2, 17)), 0.5)


def test_a_resting_faces_lid_shape_stays_and_a_smiles_squint_relaxes() -> None:
    """AU07 and AU45 read on lids at rest are their shape: an emotion target does not relax them
    below it (a prototype may tighten or close the lids further); on a smile (AU06 from
    LID_SHAPE_SMILE) they are the smile's and relax."""
    from facexpr.expression import LID_SHAPE_SMILE, RESTING_AU45

    i06, i07, i12, i45 = (AU_NAMES.index(a) for a in ("AU06", "AU07", "AU12", "AU45"))
    rest = np.zeros(len(AU_NAMES), np.float32)
    rest[[i07, i45]] = 2.5, 1.0
    neutral = emotion_aus("neutral", 1.0, rest)
    assert neutral[i07] == pytest.approx(2.5) and neutral[i45] == pytest.approx(1.0)
    assert not np.delete(neutral, [i07, i45]).any()
    assert emotion_aus("disgusted", 1.0, rest)[i07] == pytest.approx(2.5)  # disgust's is 1.5
    assert emotion_aus("angry", 1.0, rest)[i07] == pytest.approx(EMOTIONS["angry"][i07])  # 3: further
    assert emotion_aus("angry", 0.5, rest)[i07] == pytest.approx(2.75)
    assert np.array_equal(emotion_aus("happy", 0.0, rest), rest)

    smile = rest.copy()
    smile[[i06, i12]] = LID_SHAPE_SMILE, 4.5
    assert not lid_shape(smile).any()
    # A smile's squint relaxes to resting lids (AU45 RESTING_AU45), not to lids opened wide;
    # a target that raises the upper lids (AU05) opens them from there.
    made_neutral = emotion_aus("neutral", 1.0, smile)
    assert made_neutral[i45] == pytest.approx(RESTING_AU45)
    assert not np.delete(made_neutral, i45).any()
    assert emotion_aus("surprised", 1.0, smile)[i45] == pytest.approx(EMOTIONS["surprised"][i45])
    light = smile.copy()
    light[i45] = 0.3  # lids that read less closed than resting ones keep their own reading
    assert emotion_aus("neutral", 1.0, light)[i45] == pytest.approx(0.3)
    half = rest.copy()
    half[i06] = 0.5 * LID_SHAPE_SMILE
    assert lid_shape(half) == pytest.approx([1.25, 0.5])
    batch = np.stack([rest, smile, half])
    assert lid_shape(batch).shape == (3, 2)
    assert np.allclose(emotion_aus("sad", 0.6, batch)[1], emotion_aus("sad", 0.6, smile))
