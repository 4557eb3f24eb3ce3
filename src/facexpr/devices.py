"""Checking ``--device`` values before torch sees them (torch's own error is a long traceback)."""

from __future__ import annotations

import re

from facexpr.errors import ConfigError

_DEVICE = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def check_device(name: object, allow_auto: bool = True) -> str:
    """Return ``name`` (stripped, lower case) when it is a device facexpr can use.

    Valid: ``cpu``, ``cuda``, ``cuda:N`` (N = GPU index), ``mps`` and, where the command picks
    one itself, ``auto``. Anything else raises :class:`ConfigError` listing the valid values.
    """
    text = str(name).strip().lower()
    if (allow_auto and text == "auto") or _DEVICE.fullmatch(text):
        return text
    valid = "cpu, cuda, cuda:N (N = GPU index), mps" + (" or auto" if allow_auto else "")
    raise ConfigError(f"--device {name!r} is not a device; use {valid}")
