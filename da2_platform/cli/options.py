"""Option values shared by several commands."""

from __future__ import annotations

import re

from da2_platform.errors import ConfigError


def parse_hw(text: str, option: str = "--input-size", minimum: int = 16) -> tuple[int, int]:
    """'256x192' -> (256, 192): height by width, as pose papers write it."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < minimum:
        raise ConfigError(f"{option}: expected HEIGHTxWIDTH such as 256x192, both at least {minimum}; "
                          f"got {option} {text!r}")
    return int(match[1]), int(match[2])
