"""Keep library chatter (Ray's start-up lines, Tune's banners, MLflow's run links, warnings) out of the terminal.

Inside `libraries_to_log(path)`, file descriptors 1 and 2 (what C++ code such as Ray's core worker writes to),
Python's sys.stdout/sys.stderr and every logging handler that wrote to the terminal go to `path`; the yielded
rich console writes to a copy of the terminal's stderr taken before, for our own progress lines and tables.
Everything is put back on exit, including handlers that libraries created inside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console


@contextlib.contextmanager
def libraries_to_log(path: Path) -> Iterator[Console]:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_out, saved_err = sys.stdout, sys.stderr
    for stream in (saved_out, saved_err):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
    terminal_stream = os.fdopen(os.dup(saved_fds[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    terminal = Console(file=terminal_stream, force_terminal=saved_err.isatty() if hasattr(saved_err, "isatty")
                       else None)
    log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- closed in finally
    terminal_streams = {id(s) for s in (saved_out, saved_err, sys.__stdout__, sys.__stderr__) if s is not None}
    moved = []
    for handler in _stream_handlers():
        if id(handler.stream) in terminal_streams:
            moved.append((handler, handler.setStream(log)))
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)
    sys.stdout = sys.stderr = log  # logging's last resort (records no handler takes) writes to sys.stderr too
    try:
        yield terminal
    finally:
        with contextlib.suppress(Exception):
            log.flush()
        for fd, copy in saved_fds.items():
            os.dup2(copy, fd)
            os.close(copy)
        sys.stdout, sys.stderr = saved_out, saved_err
        for handler, stream in moved:
            handler.setStream(stream)
        for handler in _stream_handlers():  # created inside, on the log: back to the terminal's stderr
            if handler.stream is log:
                handler.setStream(saved_err)
        log.close()
        terminal_stream.close()


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
