"""The yardstick: budgets as multiples of DA2's cost, final AP per budget over seeds, censored time-to-target."""

from __future__ import annotations

import pytest

from da2_platform.yardstick import budgets_from, da2_unit_cost, yardstick_report


def test_budgets_are_multiples_of_the_costlier_da2_methods_cost():
    unit = da2_unit_cost({"da2": 300.0, "da2:score": 200.0, "rl": 5.0})
    assert unit == 300.0  # both DA2 methods have their policy at 1x; the baselines get the larger budget
    budgets = budgets_from([3, 1, 10], unit)
    assert [b.multiple for b in budgets] == [1, 3, 10] and budgets[2].device_seconds == 3000.0
    assert budgets_from(None, None, device_hours=[0.5])[0].device_seconds == 1800.0
    with pytest.raises(ValueError, match="DA2"):
        budgets_from([1], None)


def test_the_report_holds_means_per_budget_and_a_censored_ratio():
    budgets = budgets_from([1, 3, 10], 360.0)  # 0.1, 0.3, 1.0 device-hours
    final_ap = {"da2": [[0.20, 0.22], [0.20, 0.22], [0.20, 0.22]],
                "rl": [[None, None], [0.15, 0.17], [0.21, 0.21]],
                "optuna": [[0.05, 0.07], [0.08, 0.10], [0.12, 0.14]]}
    report = yardstick_report(budgets, final_ap, [0, 1])
    first = report["budgets"][0]
    assert first["multiple"] == 1 and first["device_hours"] == pytest.approx(0.1)
    assert first["methods"]["da2"]["final_ap_mean"] == pytest.approx(0.21)
    assert first["methods"]["rl"]["final_ap_mean"] is None  # RL had returned nothing within 1x
    to = report["to_target"]
    assert to["target_ap"] == pytest.approx(0.205)
    assert to["methods"]["da2"] == {"device_hours": pytest.approx(0.1), "ratio_to_da2": 1.0, "censored": False,
                                    "text": "0.1"}
    assert to["methods"]["rl"]["device_hours"] == pytest.approx(1.0) and to["methods"]["rl"]["ratio_to_da2"] == 10
    optuna = to["methods"]["optuna"]
    assert optuna["censored"] and optuna["device_hours"] is None and optuna["text"] == "> 1"
    assert optuna["ratio_to_da2"] == 10  # the largest budget's multiple: "more than 10x"
    rl = report["paired"]["da2"]["rl"]  # per seed: da2 at 1x minus RL at each budget
    assert rl[0] == {"multiple": 1, "mean": None, "std": None, "n": 0}  # RL had nothing at 1x
    assert rl[1]["mean"] == pytest.approx(0.05) and rl[1]["std"] == pytest.approx(0.0) and rl[1]["n"] == 2
    assert report["paired"]["da2"]["optuna"][2]["mean"] == pytest.approx(0.08)


def test_paired_gaps_match_seeds_when_a_budget_ran_at_fewer():
    budgets = budgets_from([1, 3], 360.0)
    final_ap = {"da2": [[0.20, 0.10], [0.20]], "rl": [[0.05, 0.09], [0.30]]}
    report = yardstick_report(budgets, final_ap, [0, 1], seeds_at=[[0, 1], [1]])
    rl = report["paired"]["da2"]["rl"]
    assert rl[0]["mean"] == pytest.approx(0.08) and rl[0]["n"] == 2
    assert rl[1]["mean"] == pytest.approx(-0.20) and rl[1]["n"] == 1  # seed 1's da2 at 1x (0.10) minus 0.30


@pytest.mark.parametrize("args, message", [
    (["--budgets", "1,x"], "--budgets: expected comma-separated positive multiples"),
    (["--budgets", "0,3"], "--budgets: expected comma-separated positive multiples"),
    (["--budgets", "1,3", "--budget-device-hours", "0.1"], "give one"),
    (["--budgets", "1,3", "--methods", "rl,fixed:none"], "needs da2 or da2:score"),
])
def test_compare_budgets_flags_are_named_errors(tmp_path, capsys, args, message):
    from da2_platform.cli.main import main

    rc = main(["compare", "--workdir", str(tmp_path / "w"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "w" / "ray_results").exists()
