"""The "Images" tab: upload an image (or pick one of the checkpoint's example test images) and see its top-5 classes
as a bar chart, from the image API (`--image-api`) or the checkpoint in-process; beside it, the evaluation report's
grid of the most confident mistakes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.tabs.http import API_CONCURRENCY, ApiError
from training.options import Option

TITLE = "Images"
OPTIONS = (
    Option("image_checkpoint", Path, None, "image checkpoint: its example images and report (and in-process "
                                           "predictions when no --image-api is given)"),
    Option("image_api", str, None, "image API base URL (from `modelyard serve image`)"),
)


def wanted(values: dict[str, Any]) -> bool:
    return values.get("image_checkpoint") is not None or values.get("image_api") is not None


def http_classifier(url: str, timeout: float = 30.0) -> Callable[[bytes, str], list[dict[str, Any]]]:
    """POST one image file as multipart to the image API; its top-5 classes."""
    import httpx

    def classify(raw: bytes, name: str) -> list[dict[str, Any]]:
        try:
            response = httpx.post(f"{url.rstrip('/')}/classify", files={"files": (name, raw)},
                                  data={"top_k": "5"}, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ApiError(f"the API at {url} did not answer: {exc}") from None
        if response.status_code != 200:
            raise ApiError(f"the API refused the image ({response.status_code}): {response.text[:300]}")
        return response.json()[0]["top"]
    return classify


def local_classifier(ckpt: Path, runtime: str) -> Callable[[bytes, str], list[dict[str, Any]]]:
    from serving.image_predictor import ImagePredictor

    predictor = ImagePredictor(ckpt, runtime)
    return lambda raw, name: predictor.predict([raw], 5)[0]


def build(values: dict[str, Any]) -> None:
    import gradio as gr

    from serving.refusal import Refused

    ckpt = Path(values["image_checkpoint"]) if values.get("image_checkpoint") else None
    if values.get("image_api"):
        classify, source = http_classifier(values["image_api"]), f"the BentoML API at {values['image_api']}"
    else:
        classify, source = local_classifier(ckpt, values.get("runtime", "onnx")), f"checkpoint {ckpt}"
    gr.Markdown(f"CIFAR-10 classes of an image (any size; it is resized to 32x32 as in training). Predictions from "
                f"{source}.")
    examples = sorted((ckpt / "examples").glob("*.png")) if ckpt else []
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", label="image", elem_id="image-input", sources=["upload"], height=240)
            submit = gr.Button("Classify", variant="primary", elem_id="image-submit")
            if examples:
                gr.Examples([[str(path)] for path in examples], inputs=image, label="example test images")
        with gr.Column():
            top = gr.Label(label="top 5 classes", num_top_classes=5, elem_id="image-top5")
            if ckpt and (ckpt / "mistakes.png").is_file():
                gr.Image(str(ckpt / "mistakes.png"), label="the model's most confident mistakes (test images)",
                         interactive=False, elem_id="image-mistakes")

    def predict(path: str | None) -> dict[str, float]:
        if not path:
            raise gr.Error("Upload an image or pick an example first.")
        try:
            scores = classify(Path(path).read_bytes(), Path(path).name)
        except (ApiError, Refused) as exc:
            raise gr.Error(str(exc)) from None
        return {item["label"]: item["probability"] for item in scores}

    submit.click(predict, inputs=image, outputs=top, api_name="classify_image",
                 concurrency_limit=API_CONCURRENCY)
