"""Image bytes (PNG, JPEG, WebP, any size) -> the checkpoint's top-k classes, on ONNX Runtime or torch.

Every image is checked before its pixels are decoded: a format the service reads, and at most MAX_PIXELS pixels
(a small file can declare a huge canvas, a decompression bomb). Then it is converted to RGB and resized to the
model's 32x32 with an antialiasing filter, and normalised with the training images' statistics from the manifest.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from serving.predictor import CheckpointPredictor, softmax
from serving.refusal import Refused

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_PIXELS = 24_000_000  # a 6000 x 4000 photo; decoding more would let one request exhaust the memory


def decode_upload(raw: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 (size, size, 3) from an uploaded file's bytes, or Refused (the text says why)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise Refused("empty file")
    try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            if image.format not in FORMATS:
                raise Refused(f"{image.format} images are not accepted; send {', '.join(FORMATS)}")
            width, height = image.size
            if width * height > max_pixels:
                raise Refused(f"{width}x{height} pixels: more than the {max_pixels:,} pixels this service decodes")
            if image.mode in ("RGBA", "LA", "P"):  # transparency: on a white background, as a viewer shows it
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # PIL's own limit, met while reading the header
        raise Refused(f"more than the {max_pixels:,} pixels this service decodes ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None


class ImagePredictor(CheckpointPredictor):
    task, inputs = "image", ("image",)

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        super().__init__(ckpt, runtime)
        self.classes, self.size = list(self.pre["classes"]), int(self.pre["image_size"])
        self.mean = np.asarray(self.pre["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(self.pre["std"], dtype=np.float32).reshape(1, 3, 1, 1)

    def around_model(self, model: Any) -> Any:
        from training.models.image import view_averaged  # torch runtime only: the ONNX graph has the averaging

        return view_averaged(model, self.pre)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) as in training."""
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.runner(image=self.normalise(images)))

    def top_k(self, probabilities: np.ndarray, k: int = 5) -> list[list[dict[str, Any]]]:
        k = min(k, len(self.classes))
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [[{"label": self.classes[i], "probability": round(float(p[i]), 6)} for i in row]
                for p, row in zip(probabilities, order, strict=True)]

    def predict(self, uploads: list[bytes], k: int = 5) -> list[list[dict[str, Any]]]:
        images = np.stack([decode_upload(raw, self.size) for raw in uploads])
        return self.top_k(self.probabilities(images), k)
