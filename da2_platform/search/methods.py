"""The search methods by their CLI names: `job_factory` maps each to the one function that builds its Tune job.

DA2's builder is the platform's own (`da2_platform.search.da2_job`); the baselines' builders live with the
baselines (`baselines/rl_autoaugment/job.py`, `baselines/optuna_search.py`, `baselines/pba.py`,
`baselines/fixed.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from da2_platform.errors import ConfigError

METHODS = ("da2", "da2:score", "rl", "optuna", "pba", "fixed:NAME")


def job_factory(method: str) -> Callable:
    """The job builder `(cfg, data) -> TuneJob` of a method; an unknown method or fixed policy fails here."""
    if method in ("da2", "da2:score"):  # the paper's relaxed estimator, and the score-function variant
        from functools import partial

        from da2_platform.search.da2_job import make_da2_job

        return partial(make_da2_job, method=method)
    if method == "rl":
        from baselines.rl_autoaugment.job import make_rl_job

        return make_rl_job
    if method == "optuna":
        from baselines.optuna_search import make_optuna_job

        return make_optuna_job
    if method == "pba":
        from baselines.pba import make_pba_job

        return make_pba_job
    if method.startswith("fixed:"):
        from baselines.fixed import make_fixed_job

        return make_fixed_job(method.removeprefix("fixed:"))  # an unknown name raises PolicyError now
    raise ConfigError(f"--method: unknown method {method!r}; use one of {', '.join(METHODS)}")
