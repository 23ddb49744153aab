"""Shapes accuracy of the bundled tiny model: the share of images that show exactly what
their caption asks for, judged by the deterministic `sdlab.shapes.checker` (GenEval-like).

Reports `shapes_accuracy` (all attributes right and the right number of shapes) and, for
diagnosis, `shapes_<attribute>` for count, shape, color, size and position.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch
from torch import Tensor

from sdlab.metrics import Metric


class ShapesAccuracy(Metric):
    """Per-image checker verdicts, averaged; bootstrap over images."""

    def __init__(self, **_: Any) -> None:
        self.rows: list[dict[str, Tensor]] = []
        self.image_ids: list[int] = []

    def update(self, batch: Any) -> None:
        from sdlab.shapes.checker import shapes_report

        if batch.prompts is None:
            raise ValueError("shapes accuracy needs the captions the images were generated from")
        self.rows.append(shapes_report(batch.outputs.float().cpu(), list(batch.prompts)))
        self.image_ids += list(batch.indices)

    def compute(self) -> dict[str, float]:
        ones = torch.ones(1, len(self.image_ids), dtype=torch.float64)
        return {k: float(v[0]) for k, v in self.replicates(ones).items()}

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        out = {}
        for key in self.rows[0]:
            v = torch.cat([r[key] for r in self.rows]).to(torch.float64)
            out["shapes_accuracy" if key == "correct" else f"shapes_{key}"] = counts @ v / len(v)
        return out

    def fingerprint(self) -> dict[str, Any]:
        from sdlab.shapes import checker

        code = hashlib.sha256(inspect.getsource(checker).encode()).hexdigest()
        return {"shapes_accuracy": {"checker": "sdlab.shapes.checker.shapes_report",
                                    "checker_code_sha256": code, "n": len(self.image_ids)}}
