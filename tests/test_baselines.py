"""The baselines as a user meets them: one search spec builder per method, and the own-Tuner example of
docs/baselines.md, run as written (the RL Searcher and the PBA scheduler in a user's Tuner with a user's
trainable)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"
MARKER = "The RL Searcher and the PBA scheduler work in your own `Tuner`"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def test_one_spec_builder_per_method():
    from da2_platform.errors import ConfigError
    from da2_platform.search import children, methods
    from search_spaces.policy import PolicyError

    for name in ("da2", "da2:score"):  # one builder; the name picks the estimator
        assert methods.spec_builder(name).func is methods.da2_spec
        assert methods.spec_builder(name).keywords == {"method": name}
    assert methods.spec_builder("rl") is methods.rl_spec
    assert methods.spec_builder("optuna") is methods.optuna_spec
    assert methods.spec_builder("pba") is methods.pba_spec
    assert methods.spec_builder("fixed:none").__qualname__ == methods.fixed_spec("none").__qualname__
    assert not hasattr(children, "spec_builder")  # one spec_builder, not two
    with pytest.raises(ConfigError, match="unknown method 'bogus'"):
        methods.spec_builder("bogus")
    with pytest.raises(PolicyError):
        methods.spec_builder("fixed:bogus")


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
