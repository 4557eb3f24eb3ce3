"""What a job may run on: ``--device`` values checked before torch sees them (torch's own error is
a long traceback), and the CPU cores this process may use."""

from __future__ import annotations

import os
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says, else all)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)
