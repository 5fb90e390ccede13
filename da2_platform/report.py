"""The cost/AP comparison read off a ledger: a table per method and best-so-far AP against device-hours.

AP values are COCO AP in [0, 1]; "best AP - 0.5" in the table is 0.5 AP points, i.e. 0.005 on this scale.
Rows whose method is `final:<m>` are the fresh full trainings with method m's best policy (from `da2 compare`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from da2_platform.ledger import CostLedger, LedgerRow

NEAR_BEST = 0.005  # 0.5 AP points


@dataclass
class MethodSummary:
    method: str
    trials: int
    search_device_hours: float
    best_val_ap: float
    final_ap: float | None
    device_hours_to_near_best: float
    ratio_to_da2: float | None  # search device-hours / DA2's


@dataclass
class Report:
    experiment: str
    methods: list[MethodSummary]
    curves: dict[str, list[tuple[float, float]]]  # method -> [(cumulative device-hours, best-so-far val AP)]

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "methods": [asdict(m) for m in self.methods],
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    def table_rows(self) -> list[list]:
        return [[m.method, m.trials, m.search_device_hours, m.best_val_ap, m.final_ap, m.device_hours_to_near_best,
                 m.ratio_to_da2] for m in self.methods]

    TABLE_COLUMNS = ["method", "trials", "search device-h", "best val AP", "final AP", "device-h to best-0.5",
                     "ratio to DA2"]


def build_report(rows: list[LedgerRow], experiment: str) -> Report:
    search_rows = [r for r in rows if not r.method.startswith("final:") and r.status != "failed"]
    finals = {r.method.removeprefix("final:"): r.val_ap for r in rows if r.method.startswith("final:")
              and r.status == "completed"}
    methods = sorted({r.method for r in search_rows}, key=_method_order)
    curves: dict[str, list[tuple[float, float]]] = {}
    summaries = []
    for method in methods:
        trials = sorted((r for r in search_rows if r.method == method), key=lambda r: (r.end_time, r.start_time))
        cumulative, best, curve = 0.0, -math.inf, []
        for r in trials:
            cumulative += r.device_seconds / 3600
            best = max(best, r.val_ap)
            curve.append((cumulative, best))
        near = next(h for h, ap in curve if ap >= best - NEAR_BEST)
        curves[method] = curve
        summaries.append(MethodSummary(method, len(trials), cumulative, best, finals.get(method), near, None))
    da2 = next((s for s in summaries if s.method == "da2"), None)
    for s in summaries:
        if da2 is not None and da2.search_device_hours > 0:
            s.ratio_to_da2 = s.search_device_hours / da2.search_device_hours
    return Report(experiment, summaries, curves)


def _method_order(method: str) -> tuple[int, str]:
    order = {"da2": 0, "rl": 1, "optuna": 2, "pba": 3}
    return (order.get(method, 4), method)


def plot_report(report: Report) -> bytes:
    """Best-so-far search-val AP against cumulative device-hours, one line per method (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for method, curve in report.curves.items():
        xs = [0.0] + [h for h, _ in curve]
        ys = [curve[0][1]] + [ap for _, ap in curve]
        ax.step(xs, ys, where="post", marker="o", markersize=3, label=method)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("cumulative device-hours (GPU-hours; CPU-hours without GPUs)")
    ax.set_ylabel("best search-val AP so far")
    ax.set_title(f"{report.experiment}: what each search costs and what it buys")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(workdir: Path, experiment: str) -> tuple[Report, Path, Path]:
    """Report of an experiment's ledger as JSON + PNG under <workdir>/reports/."""
    import json

    from da2_platform.errors import DataError
    from da2_platform.files import write_bytes_atomic, write_json_atomic

    ledger = CostLedger.for_experiment(workdir, experiment)
    if not ledger.exists():
        raise DataError(f"no ledger for experiment {experiment!r} at {ledger.path}")
    report = build_report(ledger.rows(), experiment)
    out = Path(workdir) / "reports"
    json_path = write_json_atomic(out / f"{experiment}.json", json.loads(json.dumps(report.to_dict())))
    png_path = write_bytes_atomic(out / f"{experiment}.png", plot_report(report))
    return report, json_path, png_path
