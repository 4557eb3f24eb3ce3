"""Property tests of the parsers users type into: AU specs and model/config coercion.

Any input either parses to a valid value or raises a ConfigError (a clear message), never
another exception. Bounded: a fixed number of examples, no deadline flakiness on busy CPUs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from facexpr.errors import ConfigError  # noqa: E402
from facexpr.expression import AU_NAMES, parse_au  # noqa: E402
from facexpr.models import get_family  # noqa: E402
from facexpr.models.base import config_from_dict  # noqa: E402

BOUNDED = settings(max_examples=150, deadline=None, derandomize=True)

_au_like = st.one_of(
    st.text(max_size=20),
    st.builds(lambda n, op, v: f"{n}{op}{v}", st.sampled_from([*AU_NAMES, "AU6", "au12", "AU99", "AU", ""]),
              st.sampled_from(["=", "+=", "-=", "==", "*=", ""]),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=5))),
)


@BOUNDED
@given(_au_like)
def test_parse_au_never_crashes(spec: str) -> None:
    try:
        parsed = parse_au(spec)
    except ConfigError as exc:
        assert str(exc)
        return
    values = [v for v in dataclasses.astuple(parsed) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in values)


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(), max_size=3))


@BOUNDED
@given(st.dictionaries(st.sampled_from(["image_size", "width", "res_blocks", "num_aus", "bogus", "lambda_adv"]),
                       _values, max_size=4))
def test_config_from_dict_never_crashes(doc: dict) -> None:
    family = get_family("ganimation")
    try:
        config = config_from_dict(family.config_cls, doc)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, family.config_cls)


@BOUNDED
@given(st.binary(max_size=300))
def test_image_headers_never_crash(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    from facexpr.errors import ImageReadError
    from facexpr.imageio import load_image

    path = tmp_path_factory.mktemp("fuzz") / "x.png"
    # half the examples start with a real PNG signature so the decoder gets past the sniffing
    path.write_bytes((b"\x89PNG\r\n\x1a\n" if data[:1] < b"\x80" else b"") + data)
    try:
        img = load_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3
