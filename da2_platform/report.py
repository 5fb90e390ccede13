"""The cost/AP comparison read off a ledger: a table per method and best-so-far AP against device-hours.

AP values are COCO AP in [0, 1]; "best AP - 0.5" in the table is 0.5 AP points, i.e. 0.005 on this scale.
Rows whose method is `final:<m>` are the fresh full trainings with method m's best policy (from `da2 compare`).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from da2_platform.ledger import CostLedger, LedgerRow

NEAR_BEST = 0.005  # 0.5 AP points


@dataclass
class MethodSummary:
    method: str
    trials: int
    search_device_hours: float
    best_search_val_ap: float
    final_ap: float | None
    device_hours_to_near_best: float
    ratio_to_da2: float | None  # search device-hours / DA2's


@dataclass
class Report:
    experiment: str
    methods: list[MethodSummary]
    curves: dict[str, list[tuple[float, float]]]  # method -> [(cumulative device-hours, best search-val AP so far)]

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "methods": [asdict(m) for m in self.methods],
                "curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(d["experiment"], [MethodSummary(**_renamed(m)) for m in d["methods"]],
                   {k: [(float(h), float(ap)) for h, ap in v] for k, v in d["curves"].items()})

    def table_rows(self) -> list[list]:
        return [[m.method, m.trials, m.search_device_hours, m.best_search_val_ap, m.final_ap, m.device_hours_to_near_best,
                 m.ratio_to_da2] for m in self.methods]

    TABLE_COLUMNS: ClassVar[list[str]] = ["method", "trials", "search device-h", "best search-val AP", "final AP", "device-h to best-0.5",
                     "ratio to DA2"]


def _renamed(saved: dict) -> dict:
    """A saved summary of an earlier version named the search-val AP `best_val_ap`."""
    return {("best_search_val_ap" + k.removeprefix("best_val_ap") if k.startswith("best_val_ap") else k): v
            for k, v in saved.items()}


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
            best = max(best, r.search_val_ap)
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


def _new_figure(figsize=(8, 5)):
    """A figure on the Agg canvas: matplotlib's object-oriented API, no pyplot state shared between threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


X_LABEL = "cumulative device-hours (GPU-hours; CPU-hours without GPUs)"


def plot_report(report: Report) -> bytes:
    """Best-so-far search-val AP against cumulative device-hours, one line per method (PNG bytes)."""
    fig, ax = _new_figure()
    for method, curve in report.curves.items():
        xs = [0.0] + [h for h, _ in curve]
        ys = [curve[0][1]] + [ap for _, ap in curve]
        ax.step(xs, ys, where="post", marker="o", markersize=3, label=method)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("best search-val AP so far")
    ax.set_title(f"{report.experiment}: what each search costs and what it buys")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


# -- a comparison over seeds --------------------------------------------------------------------------------------

@dataclass
class MethodSpread:
    """One method across the seeds of a comparison: means, sample standard deviations (None with one seed)."""

    method: str
    seeds: int
    trials: float  # mean trials per seed
    final_ap: float | None
    final_ap_std: float | None
    best_search_val_ap: float
    best_search_val_ap_std: float | None
    search_device_hours: float
    search_device_hours_std: float | None
    device_hours_to_near_best: float
    device_hours_to_near_best_std: float | None
    ratio_to_da2: float | None  # mean search device-hours / DA2's mean
    near_best_ratio_to_da2: float | None  # mean device-hours to near-best / DA2's mean
    planned_search_device_hours: float | None = None  # `da2 plan`'s figure for one seed, made before the searches


@dataclass
class SeedsReport:
    """`da2 compare --seeds ...`: per seed the single-seed `Report`, per method the spread across seeds."""

    experiment: str
    seeds: list[int]
    methods: list[MethodSpread]
    per_seed: dict[int, Report]
    base_augment: list[dict] | None = None  # applied before every policy (train.base_augment), from the rows

    TABLE_COLUMNS: ClassVar[list[str]] = ["method", "seeds", "trials", "final AP", "final AP std", "best search-val AP",
                     "planned device-h", "search device-h", "search device-h std", "device-h to near-best",
                     "near-best std", "ratio to DA2", "near-best ratio to DA2"]

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "seeds": self.seeds, "near_best": NEAR_BEST,
                "base_augment": self.base_augment, "methods": [asdict(m) for m in self.methods],
                "per_seed": {str(seed): r.to_dict() for seed, r in self.per_seed.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> SeedsReport:
        """Back from `to_dict` (a saved report, e.g. to draw its plot again)."""
        return cls(d["experiment"], [int(s) for s in d["seeds"]], [MethodSpread(**_renamed(m)) for m in d["methods"]],
                   {int(seed): Report.from_dict(r) for seed, r in d["per_seed"].items()}, d.get("base_augment"))

    def table_rows(self) -> list[list]:
        return [[m.method, m.seeds, m.trials, m.final_ap, m.final_ap_std, m.best_search_val_ap,
                 m.planned_search_device_hours, m.search_device_hours,
                 m.search_device_hours_std, m.device_hours_to_near_best, m.device_hours_to_near_best_std,
                 m.ratio_to_da2, m.near_best_ratio_to_da2] for m in self.methods]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_seeds_report(rows_by_seed: dict[int, list[LedgerRow]], experiment: str,
                       planned: dict[str, float] | None = None) -> SeedsReport:
    """Each seed's rows (only that comparison's own trials and final trainings) -> the spread per method, beside
    the planned search device-hours per seed (`da2 plan`) where given."""
    per_seed = {seed: build_report(rows, f"{experiment} seed {seed}") for seed, rows in rows_by_seed.items()}
    methods = sorted({m.method for r in per_seed.values() for m in r.methods}, key=_method_order)
    spreads = []
    for method in methods:
        found = [m for r in per_seed.values() for m in r.methods if m.method == method]
        finals = [m.final_ap for m in found if m.final_ap is not None]
        final, final_std = _mean_std(finals) if finals else (None, None)
        best, best_std = _mean_std([m.best_search_val_ap for m in found])
        hours, hours_std = _mean_std([m.search_device_hours for m in found])
        near, near_std = _mean_std([m.device_hours_to_near_best for m in found])
        spreads.append(MethodSpread(method, len(found), sum(m.trials for m in found) / len(found), final, final_std,
                                    best, best_std, hours, hours_std, near, near_std, None, None,
                                    (planned or {}).get(method)))
    da2 = next((s for s in spreads if s.method == "da2"), None)
    for s in spreads:
        if da2 is not None and da2.search_device_hours > 0:
            s.ratio_to_da2 = s.search_device_hours / da2.search_device_hours
        if da2 is not None and da2.device_hours_to_near_best > 0:
            s.near_best_ratio_to_da2 = s.device_hours_to_near_best / da2.device_hours_to_near_best
    bases = [json.loads(r.config_json).get("base_augment") for rows in rows_by_seed.values() for r in rows]
    return SeedsReport(experiment, sorted(rows_by_seed), spreads, per_seed,
                       next((b for b in bases if b is not None), None))


def band_across_seeds(curves: list[list[tuple[float, float]]], points: int = 200):
    """Best-so-far step curves of several seeds on one device-hours grid: (x, mean, low, high) as arrays.

    At x a seed's value is its best AP among trials ended by x. The grid starts where every seed has a trial
    ended: a mean over only the seeds that have one would fall when a weaker seed's first trial ends, and a
    best-so-far curve never falls. Mean, minimum and maximum are over all seeds."""
    import numpy as np

    curves = [c for c in curves if c]
    starts = [c[0][0] for c in curves]
    ends = [c[-1][0] for c in curves]
    lo, hi = max(max(starts), 1e-6), max(max(ends), max(starts), 2e-6)
    x = np.unique(np.concatenate([np.geomspace(lo, hi, points), [h for c in curves for h, _ in c if h >= lo]]))
    values = np.full((len(curves), len(x)), np.nan)
    for i, curve in enumerate(curves):
        hours = np.array([h for h, _ in curve])
        aps = np.array([ap for _, ap in curve])
        index = np.searchsorted(hours, x, side="right") - 1
        values[i] = np.where(index >= 0, aps[np.clip(index, 0, None)], np.nan)
    defined = ~np.isnan(values).any(axis=0)
    x, values = x[defined], values[:, defined]
    return x, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_seeds_report(report: SeedsReport) -> bytes:
    """Best-so-far search-val AP against cumulative device-hours per method: the mean over seeds as a line and
    the range across seeds as a band, from where every seed has a result; a dot with a bar (the range) marks
    where the slowest seed ended (a method of one trial, like DA2 or a fixed policy, is only that dot). PNG."""
    fig, ax = _new_figure((9, 5.5))
    for index, method in enumerate(m.method for m in report.methods):
        curves = [r.curves[method] for r in report.per_seed.values() if r.curves.get(method)]
        if not curves:
            continue
        color = f"C{index % 10}"
        x, mean, low, high = band_across_seeds(curves)
        ax.step(x, mean, where="post", color=color)
        ax.errorbar(x[-1], mean[-1], yerr=[[mean[-1] - low[-1]], [high[-1] - mean[-1]]], fmt="o", color=color,
                    capsize=3, label=f"{method} (mean of {len(curves)})")
        if len(curves) > 1:
            ax.fill_between(x, low, high, step="post", color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel("best search-val AP so far")
    seeds = ", ".join(map(str, report.seeds))
    ax.set_title(f"{report.experiment}: AP against cost, seeds {seeds} (band: min to max across seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def write_seeds_report(workdir: Path, name: str, report: SeedsReport) -> tuple[Path, Path]:
    """<workdir>/reports/<name>.json and .png, written atomically."""
    import json

    from da2_platform.files import write_bytes_atomic, write_json_atomic

    out = Path(workdir) / "reports"
    json_path = write_json_atomic(out / f"{name}.json", json.loads(json.dumps(report.to_dict())))
    return json_path, write_bytes_atomic(out / f"{name}.png", plot_seeds_report(report))


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
