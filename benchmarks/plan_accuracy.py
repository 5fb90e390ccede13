"""How close `da2 plan` comes to what a committed comparison spent: the plan of the comparison's own config,
methods, seeds and budget, beside the search (and final-training) device-seconds the comparison recorded.
Writes benchmarks/results/plan_accuracy.json (through `harness.write_result`: commit, config, machine) with both,
the ratio per method and whether each is within 25 %.

Rerunnable against either format of a comparison: the pieces of issue 26's comparison
(benchmarks/results/compare_cpu.json and its folder of piece files, `provenance.config_resolved`; DA2 searched
without a budget, the other methods under the seed's largest budget, stopped within a step) or the earlier one
(benchmarks/results/compare_cpu_previous.json, `config_resolved`; RL, Optuna and PBA under one budget, stopped at
their first report past it). The config is the comparison's own, so a comparison rerun with
new settings is planned with those settings.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_accuracy.py [--compare benchmarks/results/compare_cpu.json]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plan_accuracy.py --compare benchmarks/results/compare_cpu_previous.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import write_result

from da2_platform.config import ExperimentConfig
from da2_platform.plan.planner import make_plan

TOLERANCE = 0.25


def spent(entries: list[dict], key: str = "device_seconds") -> dict[str, dict]:
    """Per method: the mean, min and max over the comparison's seeds."""
    by: dict[str, list[float]] = {}
    for e in entries:
        by.setdefault(e["method"], []).append(float(e[key]))
    return {m: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "seeds": len(v)} for m, v in by.items()}


def recorded_config(raw: dict, workdir: str) -> tuple[ExperimentConfig, list[str]]:
    """The comparison's resolved config as it ran. A value today's schema refuses (a rule added since, such as
    PBA's population of at least 8) is set back after validation and named; a field it did not have takes
    today's default."""
    from pydantic import ValidationError

    raw, kept = {**copy.deepcopy(raw), "workdir": workdir}, []
    for _ in range(32):
        try:
            cfg = ExperimentConfig.model_validate(raw)
            break
        except ValidationError as e:
            for err in e.errors():
                node = raw
                *parents, leaf = err["loc"]
                for key in parents:
                    node = node[key]
                kept.append((tuple(err["loc"]), node.pop(leaf), err["msg"]))
    else:
        raise SystemExit("compare_cpu.json's config_resolved does not validate")

    def put(model, loc, value):
        head, *rest = loc
        return model.model_copy(update={head: put(getattr(model, head), rest, value) if rest else value})

    for loc, value, _ in kept:
        cfg = put(cfg, loc, value)
    return cfg, [f"{'.'.join(map(str, loc))} = {value!r} as it ran (today: {msg})" for loc, value, msg in kept]


def plan_names(compare: dict) -> dict[str, str]:
    """The plan's name of a method the comparison recorded, where they differ. A comparison from before
    `da2:score` was a method of its own ran `da2` with `search.da2.estimator` (then `score` by default)."""
    estimator = compare["config_resolved"].get("search", {}).get("da2", {}).get("estimator")
    if "da2:score" not in compare["methods_requested"] and estimator == "score":
        return {"da2": "da2:score"}
    return {}


def side_by_side(planned: dict[str, float], recorded: dict[str, dict], names: dict[str, str]) -> dict[str, dict]:
    """Per method the comparison recorded: the plan of what it ran beside what it spent."""
    out = {}
    for method, used in recorded.items():
        seconds = planned.get(names.get(method, method))
        if seconds is None:
            continue
        ratio = seconds / used["mean"]
        out[method] = {"planned_as": names.get(method, method), "planned_device_seconds": seconds,
                       "spent_device_seconds": used, "planned_device_hours": seconds / 3600,
                       "spent_device_hours": used["mean"] / 3600,
                       "ratio": ratio, "within_25_percent": abs(ratio - 1) <= TOLERANCE}
    return out


def recorded_run(compare: dict) -> dict:
    """What a comparison ran and spent, in one shape for both formats of compare_cpu.json."""
    if "pieces" in compare:
        searches, finals = [], []
        for key, piece in compare["pieces"].items():
            kind, seed, *rest = key.split(":")
            if kind == "search":
                searches.append({"seed": int(seed), "method": ":".join(rest), "device_seconds": piece["device_seconds"],
                                 "budget": piece.get("budget_device_seconds")})
            elif kind == "final" and piece.get("seconds") is not None:  # in-process on one thread: device-s
                finals.append({"seed": int(seed), "method": ":".join(rest[:-1]), "device_seconds": piece["seconds"]})
        budgets = [s["budget"] for s in searches if s["budget"]]
        provenance = compare.get("provenance", {})
        return {"config": provenance.get("config_resolved") or {}, "label": provenance.get("config"),
                "methods": compare["methods"], "seeds": sorted({s["seed"] for s in searches}),
                "budget_device_hours": statistics.fmean(budgets) / 3600 if budgets else None,
                "capped": {s["method"] for s in searches if s["budget"]}, "stop_at": "step",
                "searches": searches, "finals": finals, "names": {}, "machine": provenance.get("machine")}
    return {"config": compare["config_resolved"], "label": compare.get("config"),
            "methods": compare["methods_requested"], "seeds": [int(s) for s in compare.get("seeds", [0])],
            "budget_device_hours": compare.get("budget_device_hours"), "capped": {"rl", "optuna", "pba"},
            "stop_at": "report", "searches": compare["searches"], "finals": compare.get("finals", []),
            "names": plan_names(compare), "machine": compare.get("machine")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", default="benchmarks/results/compare_cpu.json")
    parser.add_argument("--source", default="measure", choices=["auto", "ledger", "measure"],
                        help="where the unit costs come from (default: measured afresh)")
    parser.add_argument("--workdir", default="work/plan-accuracy", help="the plan's cache and data copy")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times; each run is kept and "
                        "the figures are the last run's (a busy machine moves a measurement)")
    parser.add_argument("--out", default="benchmarks/results/plan_accuracy.json")
    args = parser.parse_args()
    compare = json.loads(Path(args.compare).read_text())
    if isinstance(compare.get("pieces"), list):  # the summary lists its pieces: one file each, in the folder beside
        from harness import read_pieces

        compare["pieces"] = read_pieces(Path(args.compare).with_suffix(""))
    ran = recorded_run(compare)
    cfg, as_ran = recorded_config(ran["config"], args.workdir)
    seeds, budget, names = ran["seeds"], ran["budget_device_hours"], ran["names"]
    machine = ran["machine"] or {}
    cpus = int(machine.get("cpus") or machine.get("cores") or os.cpu_count() or 1)
    methods = [names.get(m, m) for m in ran["methods"]]
    capped = {names.get(m, m) for m in ran["capped"]}
    runs = []
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        plan = make_plan(cfg, ",".join(methods), source=args.source, budget_device_hours=budget, workers=1,
                         devices_per_worker=cpus, seeds=seeds, config_label=ran["label"] or "compare_cpu.json",
                         capped=capped, stop_at=ran["stop_at"])
        plan_seconds = time.perf_counter() - started
        searches = side_by_side({m.method: m.search_device_seconds for m in plan.methods},
                                spent(ran["searches"]), names)
        finals = side_by_side({m.method: m.final_device_seconds / max(1, m.finals) for m in plan.methods
                               if m.finals}, spent(ran["finals"]), names)
        runs.append({"load_average_1min": os.getloadavg()[0], "plan_seconds": plan_seconds,
                     "train_step": plan.costs.train_step, "da2_step": plan.costs.da2_step,
                     "search_ratios": {m: v["ratio"] for m, v in searches.items()},
                     "final_ratios": {m: v["ratio"] for m, v in finals.items()}})
    result = {
        "benchmark": "plan_accuracy", "compare": args.compare, "compare_config": ran["label"],
        "compare_provenance": compare.get("provenance"), "compare_machine": ran["machine"],
        "budget_capped": sorted(capped), "budget_stop": ran["stop_at"],
        "load_average_1min": os.getloadavg()[0], "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "seeds": seeds, "budget_device_hours": budget, "planned_as": names,
        "config_as_ran": as_ran,
        "plan_seconds": plan_seconds, "costs": plan.costs.to_dict(), "sizes": plan.sizes.__dict__,
        "assumptions": plan.assumptions, "tolerance": TOLERANCE,
        "searches": searches, "finals": finals,
        "all_searches_within_25_percent": all(v["within_25_percent"] for v in searches.values()),
        "runs": runs,
    }
    write_result(args.out, result, config=ran["label"], resolved=cfg.model_dump(mode="json"))
    for method, v in searches.items():
        print(f"{method:24s} planned {v['planned_device_hours']:.4f} device-h  spent {v['spent_device_hours']:.4f}"
              f"  ratio {v['ratio']:.2f}{'' if v['within_25_percent'] else '  OUTSIDE 25 %'}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
