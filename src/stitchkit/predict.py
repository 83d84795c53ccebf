"""``stitchkit predict``: a trained model on image files, with its own preprocessing, class names and
probabilities, in batches. The model is a finished run (its folder) or a model folder (``stitchkit export``,
``save_pretrained``). Unreadable files are named and skipped.

    predictor = Predictor("runs/my-stitch")            # or Predictor("exported/my-stitch")
    predictor.predict([Image.open("cat.jpg")], top_k=3)   # [[{"class": "cat", "index": 3, "probability": 0.91}, ...]]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image

from .errors import StitchkitError
from .modelfolder import no_classifier
from .pretrained import folder_or_run, load_pretrained
from .training.data import DECODE_ERRORS, IMAGE_EXTENSIONS, build_transforms, eval_transform, to_rgb
from .training.trained import load_trained
from .training.runtime import resolve_device
from .zoo.metadata import preprocessing


class Predictor:
    """A trained model ready to classify images the way it was evaluated: the same resize, centre crop and
    normalisation as its validation split. ``source``: a finished run's folder or a model folder."""

    def __init__(self, source: str | Path, device: str | None = None):
        if folder_or_run(source) == "folder":
            self.model = load_pretrained(source, device=resolve_device(device or "auto"))
            info, cfg = self.model.stitchkit_info, self.model.pretrained_cfg
            names, classes = info.get("class_names"), cfg.get("num_classes") or 0
            if cfg.get("num_classes") == 0:  # features, not class scores: softmax over them would name nonsense
                raise no_classifier(source, "predict classes")
            self.transform = eval_transform(cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"],
                                            cfg["mean"], cfg["std"])
        else:
            run, config, self.model, _ = load_trained(source, device=device)
            self.transform = build_transforms(config.data, preprocessing(config.model.pixel_source), train=False)
            result = run.read_result() or {}
            names, classes = result.get("class_names"), result.get("classes", 0)
        self.device = next(self.model.parameters()).device
        self.class_names = list(names) if names else [str(i) for i in range(classes)]

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict]]:
        """For each image, its ``top_k`` classes: ``{"class", "index", "probability"}``, most probable first."""
        if not images:  # (torch.stack has nothing to stack: no images, no predictions)
            return []
        batch = torch.stack([self.transform(to_rgb(image)) for image in images]).to(self.device)
        probabilities = self.model(batch).float().softmax(dim=-1)
        values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        return [[{"class": self._name(int(i)), "index": int(i), "probability": float(p)} for p, i in zip(row_p, row_i)]
                for row_p, row_i in zip(values.cpu(), indices.cpu())]

    def _name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files named, and the image files inside the folders named (recursively, sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.exists():
            files.append(item)
        else:
            raise StitchkitError(f"{str(item)!r} does not exist; pass image files or folders of images")
    return files


@dataclass
class Skipped:
    file: Path
    reason: str


def predict_files(predictor: Predictor, files: Sequence[Path], top_k: int = 5, batch_size: int = 32,
                  on_skip: Callable[[Skipped], None] = lambda s: None, progress: bool | None = None) -> list[dict]:
    """``[{"file", "top": [...]}]`` for every readable image of ``files``, in order; unreadable ones are reported
    to ``on_skip`` and left out. A progress bar on a terminal when there are several batches."""
    if progress is None:
        progress = sys.stderr.isatty() and len(files) > batch_size
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="image")
    results: list[dict] = []
    try:
        for start in range(0, len(files), batch_size):
            chunk, images = files[start : start + batch_size], []
            for path in chunk:
                try:
                    with Image.open(path) as image:
                        images.append((path, to_rgb(image)))
                except DECODE_ERRORS as err:
                    on_skip(Skipped(path, str(err).splitlines()[0] if str(err) else type(err).__name__))
            if images:
                tops = predictor.predict([image for _, image in images], top_k)
                results += [{"file": str(path), "top": top} for (path, _), top in zip(images, tops)]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results
