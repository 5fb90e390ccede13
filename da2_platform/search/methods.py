"""The search methods by their CLI names: each maps to the function that builds its Ray Tune job."""

from __future__ import annotations

from collections.abc import Callable

from da2_platform.errors import ConfigError

METHODS = ("da2", "rl", "optuna", "pba", "fixed:NAME")


def job_factory(method: str) -> Callable:
    if method == "da2":
        from da2_platform.search.da2_job import make_da2_job

        return make_da2_job
    if method in ("rl", "optuna", "pba") or method.startswith("fixed:"):
        from da2_platform.search import children

        return children.job_factory(method)
    raise ConfigError(f"--method: unknown method {method!r}; use one of {', '.join(METHODS)}")
