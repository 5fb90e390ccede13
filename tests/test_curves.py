"""Figures are drawn with matplotlib's object-oriented API (Figure + Agg canvas): no pyplot state, no backend switch
inside library code that runs in search threads."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("da2_platform", "search_spaces", "pose_models", "baselines")


def test_no_library_module_uses_pyplot_or_switches_the_backend():
    offenders = []
    for package in LIBRARY:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                if any(n.startswith("matplotlib.pyplot") or n == "pylab" for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: pyplot")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                        and ast.unparse(node.func.value) == "matplotlib"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: matplotlib.use")
    assert offenders == []


def test_policy_curves_are_a_png():
    from da2_platform.search.curves import plot_policy_curves

    curves = {
        "slots": [["Rotate", "Scale"], ["Brightness", "Cutout"]],
        "curves": [
            {"step": s, "pi": [0.5, 0.5], "p": [[0.1 * s, 0.2], [0.3, 0.4]], "m": [[0.5, 0.6], [0.7, 0.8]]}
            for s in range(4)
        ],
    }
    image = cv2.imdecode(np.frombuffer(plot_policy_curves(curves), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 16 * 110 and image.std() > 10
