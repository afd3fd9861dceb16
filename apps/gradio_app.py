"""The Gradio demo: one tab per model, each calling its BentoML API when given its URL, or an in-process predictor."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reporting to the internet
import gradio as gr  # noqa: E402

NEWS_EXAMPLES = [
    "Stocks climbed on Wall Street as strong quarterly earnings from banks lifted investor confidence.",
    "The striker scored twice in the second half to send his team into the championship final.",
    "Astronomers using a new space telescope found water vapour in the atmosphere of a distant planet.",
    "Rebels and government troops agreed to a ceasefire after talks brokered by the United Nations.",
]


class ApiError(RuntimeError):
    pass


def http_classifier(api_url: str, timeout: float = 30.0) -> Callable[[list[str]], list[dict[str, Any]]]:
    """POST texts to a running news API (`modelyard serve news`)."""
    def classify(texts: list[str]) -> list[dict[str, Any]]:
        request = urllib.request.Request(f"{api_url.rstrip('/')}/classify", data=json.dumps({"texts": texts}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a 4xx carries the reason in its body
            reason = exc.read().decode(errors="replace")[:300]
            raise ApiError(f"the API refused the text ({exc.code}): {reason}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise ApiError(f"the API at {api_url} did not answer: {exc}") from None
    return classify


def local_classifier(ckpt: Path, runtime: str = "onnx") -> Callable[[list[str]], list[dict[str, Any]]]:
    from serving.predictor import NewsPredictor

    return NewsPredictor(ckpt, runtime).predict


def news_tab(classify: Callable[[list[str]], list[dict[str, Any]]], source: str) -> None:
    gr.Markdown(f"Topic of a news text (AG News classes). Predictions from {source}.")
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="news text", lines=5, elem_id="news-text",
                              placeholder="Paste a headline and a sentence or two")
            submit = gr.Button("Classify", variant="primary", elem_id="news-submit")
            gr.Examples(NEWS_EXAMPLES, inputs=text)
        with gr.Column():
            topic = gr.Textbox(label="predicted topic", interactive=False, elem_id="news-topic")
            probabilities = gr.Label(label="probabilities", num_top_classes=4, elem_id="news-probabilities")

    def predict(value: str) -> tuple[str, dict[str, float]]:
        if not value or not value.strip():
            raise gr.Error("Enter some text first.")
        try:
            result = classify([value])[0]
        except ApiError as exc:
            raise gr.Error(str(exc)) from None
        note = " (text was cut to the model's length)" if result.get("truncated") else ""
        return result["label"] + note, result["probabilities"]

    submit.click(predict, inputs=text, outputs=[topic, probabilities], api_name="classify_news")
    text.submit(predict, inputs=text, outputs=[topic, probabilities])


def build_app(news_checkpoint: Path | None = None, news_api: str | None = None, runtime: str = "onnx",
              bootstrap_servers: str | None = None, monitor_metrics: str | None = None) -> gr.Blocks:
    """Tabs for what is given: News (a checkpoint or its API), Turbofan monitor (Kafka + the monitor's /metrics)."""
    news = news_checkpoint is not None or news_api is not None
    turbofan = bootstrap_servers is not None and monitor_metrics is not None
    if not (news or turbofan):
        raise ValueError("give a news checkpoint or API URL, and/or --bootstrap-servers with --monitor-metrics")
    with gr.Blocks(title="modelyard demo") as app:
        gr.Markdown("# modelyard demo")
        if news:
            with gr.Tab("News"):
                if news_api:
                    news_tab(http_classifier(news_api), f"the BentoML API at {news_api}")
                else:
                    news_tab(local_classifier(news_checkpoint, runtime), f"checkpoint {news_checkpoint} ({runtime})")
        if turbofan:
            from apps.turbofan_dashboard import turbofan_tab

            with gr.Tab("Turbofan monitor"):
                turbofan_tab(bootstrap_servers, monitor_metrics)
    return app
