"""Pictures of a DA2 search: how pi, p and m of every slot moved over the steps."""

from __future__ import annotations

import io

import numpy as np


def plot_policy_curves(curves: dict) -> bytes:
    """Three heatmaps (pi per sub-policy, p and m per op slot) over the search steps, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    slots = [tuple(s) for s in curves["slots"]]
    snaps = curves["curves"]
    steps = [s["step"] for s in snaps]
    pi = np.array([s["pi"] for s in snaps]).T  # [K, T]
    p = np.array([np.ravel(s["p"]) for s in snaps]).T  # [K*N, T]
    m = np.array([np.ravel(s["m"]) for s in snaps]).T
    sub_labels = [" > ".join(s) for s in slots]
    op_labels = [f"{k}:{name}" for k, slot in enumerate(slots) for name in slot]
    fig_h = max(4.0, 0.18 * len(op_labels) + 2)
    fig = Figure(figsize=(16, fig_h), layout="constrained")  # its own Agg canvas: no pyplot state across threads
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, data, labels, title in ((axes[0], pi, sub_labels, "sub-policy weight pi"),
                                    (axes[1], p, op_labels, "op probability p"),
                                    (axes[2], m, op_labels, "op magnitude m")):
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(steps[0], steps[-1], len(labels) - 0.5, -0.5))
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        ax.set_xlabel("search step")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
