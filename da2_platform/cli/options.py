"""Option values shared by several commands."""

from __future__ import annotations

import re
import shlex
from typing import Any, Literal

from da2_platform.errors import ConfigError
from da2_platform.limits import MAX_INPUT_SIDE

# Choices typer lists in --help and checks (a bad value: exit 2 naming the option); the library checks them too.
Decoder = Literal["standard", "dark"]
Gate = Literal["final-ap", "search-val-ap", "none"]
Rescore = Literal["bbox_keypoint"]
Shift = Literal["none", "wide"]
METHOD_METAVAR = "[da2|rl|optuna|pba|fixed:NAME]"
METHOD_HELP = ("The search method: da2, rl, optuna, pba, or fixed:NAME (NAME: none, standard-pose, "
               "randaugment[:N:M], trivialaugment).")


def check_method(method: str) -> str:
    """Typer callback of --method: fixed:NAME forms rule out a plain choice, so the name is checked here, before
    anything loads (an unknown method or fixed policy is one `error:` line, exit 2)."""
    from da2_platform.search.methods import spec_builder

    spec_builder(method)
    return method


def parse_hw(text: str, option: str = "--input-size", minimum: int = 16, maximum: int = MAX_INPUT_SIDE,
             why: str = "the paper's largest input is 384x288") -> tuple[int, int]:
    """'256x192' -> (256, 192): height by width, as pose papers write it; each side from `minimum` to `maximum`
    (checked before anything of that size is allocated; docs/security.md)."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*[xX]\s*(\d{1,9})\s*", text)
    if not match or min(int(match[1]), int(match[2])) < minimum:
        raise ConfigError(f"{option}: expected HEIGHTxWIDTH such as 256x192, both at least {minimum}; "
                          f"got {option} {text!r}")
    h, w = int(match[1]), int(match[2])
    if h > maximum or w > maximum:
        raise ConfigError(f"{option}: {h}x{w} is larger than {maximum} pixels a side ({why}; docs/security.md)")
    return h, w


def check_batch_size(value: int, option: str = "--batch-size", maximum: int = 512) -> int:
    if not 1 <= value <= maximum:
        raise ConfigError(f"{option}: expected a whole number from 1 to {maximum}; got {value}")
    return value


INPUT_SIZE_HELP = "Crop HEIGHTxWIDTH: the height a multiple of 32, the width of 16, at most 1024 a side."


def parse_input_size(text: str, option: str = "--input-size", maximum: int = MAX_INPUT_SIDE) -> tuple[int, int]:
    """The one rule of every command's --input-size, the config's `data.input_size` rule: a crop size P2Net
    accepts (H a multiple of 32, W of 16) and that fits in memory, at most `maximum` a side (the paper's largest
    is 384x288)."""
    h, w = parse_hw(text, option, minimum=32, maximum=maximum)
    if h % 32 or w % 16:
        raise ConfigError(f"{option}: {h}x{w}: the height must be a multiple of 32 and the width of 16")
    return h, w


def resume_hint(error: Exception, command: str, flags: list[tuple[str, Any]]) -> str:
    """The interrupted search's message, ending with the command that continues it: this command's own flags
    (a value of None or False is left out, True is a bare flag) and --resume."""
    words = ["da2", command]
    for flag, value in flags:
        if value is None or value is False:
            continue
        words += [flag] if value is True else [flag, str(value)]
    message = str(error).split(" Continue it with:")[0].rstrip(". ")
    return f"{message}. Continue it with: {shlex.join(words)} --resume"
