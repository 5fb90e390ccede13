"""Eq. 12 on the real network: the finite-difference hypergradient against the exact second-order one, and how
much of one step's hypergradient is signal.

On the CPU benchmark config (cpu-tiny P2Net from the warm start, the lowlight target testbed, the base flip, all
136 pairs, DA2's defaults), at the search's start, for `--draws` draws per seed of (base-augmented train batch,
search-val batch, policy noise):
- `exact`: Eq. 11, -zeta * grad_d [grad_w L_train(w, d) . grad_w' L_val(w')], by double backward, w' the weights
  after the real w step (Adam, as the search runs it: Eq. 10's SGD step is the paper's model of it);
- `central` and `forward`: Eq. 12 and its one-sided form as `BilevelStep.hypergradient` computes them, at the
  paper's eps = 0.01 / ||grad_w' L_val|| and at the other `--fd-scales` (a smaller eps shrinks the truncation
  error of a smooth loss; where it does not help, the loss is not smooth along that direction);
- per draw: the cosine of each to `exact` over all d parameters and per group (pi, p, m), the norm ratio, the
  share of p entries whose sign agrees, and the RMS of `exact` (against Adam's eps 1e-8: why `normalise`);
- across draws of a seed: the mean pairwise cosine of the exact hypergradients (1: every draw points the same way,
  0: the direction is noise) and the SNR of their mean (|mean| / its standard error, per entry, averaged).
In float64 (the approximation alone) and float32 (what the search runs). Writes
benchmarks/results/da2_hypergradient.json:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/da2_hypergradient.py --seeds 0 1 2 --draws 4
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time

import numpy as np
import torch
from harness import ensure_warm_start, write_result

from da2_platform.config import load_config
from da2_platform.data.splits import prepare_data
from da2_platform.data.topdown import TopDownDataset
from da2_platform.search.bilevel import _restore_buffers, _save_buffers
from da2_platform.search.da2 import DA2Search, da2_method_config, with_targets

GROUPS = ("pi", "p", "m")


def flat(grads) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten() for g in grads])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def to_dtype(batch, dtype):
    return type(batch)(**{f: getattr(batch, f).to(dtype) if getattr(batch, f).is_floating_point()
                          else getattr(batch, f) for f in ("images", "keypoints", "visible", "heatmaps")})


def noise_to(noise, dtype):
    out = copy.copy(noise)
    for field in ("gumbel", "bernoulli_u", "sign", "draws", "m_noise"):
        value = getattr(noise, field)
        if value is not None:
            setattr(out, field, value.to(dtype))
    return out


def one_draw(search: DA2Search, train, val, noise, fd_scales: list[float]) -> dict:
    """Exact, central and forward hypergradients at the search's current state (the finite differences at each
    eps scale, the paper's 0.01 first); the state is left as it was."""
    step = search.step_fn
    model_state = copy.deepcopy(search.model.state_dict())
    w_opt_state = copy.deepcopy(search.w_opt.state_dict())
    w_before = [p.detach().clone() for p in step.weights]
    _, d_at_w = step.w_step(train, noise, keep_d_grad=True)
    out = {}
    for scale in fd_scales:
        step.fd_scale = scale
        for mode in ("central", "forward"):
            step.mode = mode
            hyper, _, _ = step.hypergradient(train, val, noise, w_before, d_at_w)
            out[mode if scale == fd_scales[0] else f"{mode}@{scale:g}"] = [h.detach().clone() for h in hyper]
    step.fd_scale = fd_scales[0]
    # exact: -zeta * d/dd [ grad_w L_train(w, d) . grad_w' L_val(w') ]
    buffers = _save_buffers(search.model)
    g_val = torch.autograd.grad(step.val_loss(search.model, val), step.weights, allow_unused=True)
    g_val = [torch.zeros_like(p) if g is None else g for g, p in zip(g_val, step.weights, strict=True)]
    with torch.no_grad():
        for p, w in zip(step.weights, w_before, strict=True):
            p.copy_(w)
    g_train = torch.autograd.grad(step.loss(search.model, search.policy(train, noise)), step.weights,
                                  create_graph=True, allow_unused=True)
    dot = sum((gt * gv.detach()).sum() for gt, gv in zip(g_train, g_val, strict=True) if gt is not None)
    exact = torch.autograd.grad(dot, step.d_params, allow_unused=True)
    out["exact"] = [-step.zeta * (torch.zeros_like(p) if g is None else g) for g, p in zip(exact, step.d_params,
                                                                                         strict=True)]
    _restore_buffers(search.model, buffers)
    search.model.load_state_dict(model_state)
    search.w_opt.load_state_dict(w_opt_state)
    return out


def compare_draw(grads: dict, names: list[str]) -> dict:
    exact = flat(grads["exact"])
    row = {"exact_rms": float(exact.pow(2).mean().sqrt())}
    for mode in ("central", "forward"):
        approx = flat(grads[mode])
        row[mode] = {"cosine": cosine(approx, exact), "norm_ratio": float(approx.norm() / exact.norm()),
                     "groups": {name: cosine(flat([a]), flat([e])) for name, a, e
                                in zip(names, grads[mode], grads["exact"], strict=True)}}
        p_index = names.index("p")
        a, e = grads[mode][p_index].flatten(), grads["exact"][p_index].flatten()
        row[mode]["p_sign_agreement"] = float(((a > 0) == (e > 0)).double().mean())
    for key in [k for k in grads if "@" in k]:  # the other eps scales: their cosine to exact
        row.setdefault("other_eps_scales", {})[key] = cosine(flat(grads[key]), exact)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bench_cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--fd-scales", type=float, nargs="+", default=[0.01, 0.001, 0.1],
                        help="eps = scale / ||grad_w' L_val||; the first is the one reported as central/forward")
    parser.add_argument("--out", default="benchmarks/results/da2_hypergradient.json")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2 (the signal is measured across draws)")
    torch.set_num_threads(1)
    base = da2_method_config(load_config(args.config), "da2")
    ensure_warm_start(base, args.config)
    result: dict = {"benchmark": "da2_hypergradient", "draws": args.draws, "fd_scales": args.fd_scales, "runs": {}}
    for seed, dtype_name in itertools.product(args.seeds, args.dtypes):
        start = time.perf_counter()
        dtype = getattr(torch, dtype_name)
        cfg = base.model_copy(update={"seed": seed})
        data = prepare_data(cfg)
        size = cfg.data.input_size
        search = DA2Search(cfg, TopDownDataset(data.search_train_annotations, data.train_images, input_size=size),
                           TopDownDataset(data.search_val_annotations, data.search_val_images, input_size=size),
                           torch.device("cpu"))
        search.model.to(dtype)
        search.policy.to(dtype)
        search.w_opt = type(search.w_opt)(search.model.parameters(), **search.w_opt.defaults)
        search.step_fn.w_optimizer = search.w_opt
        search.step_fn.weights = [p for p in search.model.parameters() if p.requires_grad]
        names = [name.removesuffix("_logits") for name, _ in search.policy.named_parameters()]
        draws, rows = [], []
        for index in range(args.draws):
            search.base_augment.step = index
            train = to_dtype(with_targets(next(search.train_stream), cfg, torch.device("cpu"), search.base_augment),
                             dtype)
            val = to_dtype(with_targets(next(search.val_stream), cfg, torch.device("cpu")), dtype)
            noise = noise_to(search.policy.sample_noise(train.images.shape[0], search.generator), dtype)
            if index == 0:  # the whole computation runs in the dtype (a loss cast to float32 would hide float64)
                with torch.no_grad():
                    loss_dtype = search.step_fn.loss(search.model, search.policy(train, noise)).dtype
                if loss_dtype != dtype:
                    raise SystemExit(f"error: the {dtype_name} run computes its loss in {loss_dtype}")
            grads = one_draw(search, train, val, noise, args.fd_scales)
            draws.append(flat(grads["exact"]))
            rows.append(compare_draw(grads, names))
            print(json.dumps({"seed": seed, "dtype": dtype_name, "draw": index,
                              "central": round(rows[-1]["central"]["cosine"], 4),
                              "forward": round(rows[-1]["forward"]["cosine"], 4)}), flush=True)
        stacked = torch.stack(draws)
        pairwise = [cosine(a, b) for a, b in itertools.combinations(draws, 2)]
        mean, sem = stacked.mean(0), stacked.std(0, unbiased=True) / np.sqrt(len(draws))
        scales = sorted({k for r in rows for k in r.get("other_eps_scales", {})})
        result["runs"][f"{seed}:{dtype_name}"] = {
            "other_eps_scales_cosine_mean": {k: float(np.mean([r["other_eps_scales"][k] for r in rows]))
                                             for k in scales},
            "draws": rows, "exact_pairwise_cosine_mean": float(np.mean(pairwise)),
            "exact_mean_snr": float((mean.abs() / sem.clamp_min(1e-30)).mean()),
            "central_cosine_mean": float(np.mean([r["central"]["cosine"] for r in rows])),
            "forward_cosine_mean": float(np.mean([r["forward"]["cosine"] for r in rows])),
            "seconds": time.perf_counter() - start}
        write_result(args.out, result, args.config, resolved=base.model_dump(mode="json"))
    print(json.dumps({k: {m: v[m] for m in ("central_cosine_mean", "forward_cosine_mean",
                                           "exact_pairwise_cosine_mean", "exact_mean_snr")}
                      for k, v in result["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
