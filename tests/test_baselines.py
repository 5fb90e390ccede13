"""The baselines as a user meets them: one job builder per method, and the README's own-Tuner example, run as
written (the RL Searcher and the PBA scheduler in a user's Tuner with a user's trainable)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "The RL Searcher and the PBA scheduler work in your own `Tuner`"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def test_one_job_builder_per_method_from_baselines():
    from baselines.fixed import make_fixed_job
    from baselines.optuna_search import make_optuna_job
    from baselines.pba import make_pba_job
    from baselines.rl_autoaugment.job import make_rl_job
    from da2_platform.errors import ConfigError
    from da2_platform.search import children, methods
    from da2_platform.search.da2_job import make_da2_job
    from search_spaces.policy import PolicyError

    for name in ("da2", "da2:score"):  # one builder; the name picks the estimator
        assert methods.job_factory(name).func is make_da2_job and methods.job_factory(name).keywords == {"method": name}
    assert methods.job_factory("rl") is make_rl_job
    assert methods.job_factory("optuna") is make_optuna_job
    assert methods.job_factory("pba") is make_pba_job
    assert methods.job_factory("fixed:none").__qualname__ == make_fixed_job("none").__qualname__
    assert not hasattr(children, "job_factory")  # one job_factory, not two
    with pytest.raises(ConfigError, match="unknown method 'bogus'"):
        methods.job_factory("bogus")
    with pytest.raises(PolicyError):
        methods.job_factory("fixed:bogus")


@pytest.mark.slow
def test_readme_example_runs_the_rl_searcher_and_pba_in_a_users_tuner(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}  # not importable: Ray pickles the trainable by value
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 -- our own README, run as written
    rl, pba = namespace["rl"], namespace["pba"]
    assert len(rl) == 4 and rl.errors == [] and len(pba) == 4 and pba.errors == []
    searcher_state = Path(tmp_path / "work" / "my-tuner" / "rl")
    assert any(searcher_state.glob("searcher-state-*.pkl"))  # the controller checkpointed with the experiment
    for result in list(rl) + list(pba):
        assert 0.0 <= result.metrics["val_ap"] <= 1.0
    assert all(r.metrics["training_iteration"] == 2 for r in rl)
