"""CLIP score through torchmetrics' `CLIPScore`, with any Hugging Face CLIP.

torchmetrics accepts only a fixed list of hub ids, or a loader callable returning
(model, processor): sdlab passes a loader, so any hub id or local directory works (the tiny
shapes CLIP included). Scale convention (torchmetrics'): per image 100 * cos(image
embedding, caption embedding), averaged over images, the average clamped at 0. Hessel et
al.'s CLIPScore is 2.5 * max(cos, 0) per image instead: divide by 40 to compare, when no
image has a negative cosine. Images enter the processor as uint8 (round(255 x)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdlab.metrics import Metric, library_versions
from sdlab.metrics.extractors import default_device, load_clip, pooled, to_uint8, weights_sha256


class TensorCLIP(torch.nn.Module):
    """A `CLIPModel` whose `get_*_features` return tensors, which torchmetrics expects."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return pooled(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None
                          ) -> Tensor:
        return pooled(self.model.get_text_features(input_ids=input_ids,
                                                   attention_mask=attention_mask))


def clip_loader(model: str, device: str | None = None):
    """A zero-argument loader for torchmetrics' `model_name_or_path`."""

    def load() -> tuple[TensorCLIP, Any]:
        clip, processor = load_clip(model, str(default_device(device)))
        return TensorCLIP(clip), processor

    return load


class CLIPScore(Metric):
    """Mean 100 * cos(image, prompt) under a Hugging Face CLIP (torchmetrics convention)."""

    def __init__(self, model_name_or_path: str = "openai/clip-vit-large-patch14",
                 device: str | None = None, **_: Any) -> None:
        from torchmetrics.multimodal import CLIPScore as TorchmetricsCLIPScore

        # not `model`: that context key is the generative model `build` hands every metric
        self.model_name, self.device = str(model_name_or_path), default_device(device)
        self.metric = TorchmetricsCLIPScore(model_name_or_path=clip_loader(self.model_name,
                                                                           str(self.device)))
        self.scores: list[Tensor] = []
        self.image_ids: list[int] = []

    @torch.no_grad()
    def update(self, batch: Any) -> None:
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        if batch.prompts is None:
            raise ValueError("clip_score needs the prompts of the generated images")
        images = list(to_uint8(batch.outputs).to(self.device))
        # torchmetrics' own update, kept per image so that images can be resampled
        scores, _ = _clip_score_update(images, list(batch.prompts), self.metric.model,
                                       self.metric.processor)
        self.scores.append(scores.double().cpu())
        self.image_ids += list(batch.indices)

    def compute(self) -> dict[str, float]:
        return {"clip_score": float(self.replicates(torch.ones(1, len(self.image_ids)))[
            "clip_score"][0])}

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        s = torch.cat(self.scores)
        return {"clip_score": (counts.to(s) @ s / len(s)).clamp(min=0)}

    def fingerprint(self) -> dict[str, Any]:
        ip = self.metric.processor.image_processor
        return {"clip_score": {
            "model": self.model_name, "weights_sha256": weights_sha256(self.model_name),
            "scale": "100 * cos per image, mean over images, clamped at 0 (torchmetrics)",
            "input": "uint8 (round(255 x)) through the model's CLIPProcessor",
            "image_size": str(getattr(ip, "crop_size", None) or getattr(ip, "size", None)),
            "n": len(self.image_ids), "versions": library_versions()}}
