"""The "News" tab: the topic of a pasted text, from the news API (`--news-api`) or a checkpoint in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.tabs.http import API_CONCURRENCY, ApiError, post_json
from training.options import Option

TITLE = "News"
OPTIONS = (
    Option("news_checkpoint", Path, None, "news checkpoint for in-process predictions"),
    Option("news_api", str, None, "news API base URL (from `modelyard serve news`)", aliases=("--api-url",)),
)
EXAMPLES = [
    "Stocks climbed on Wall Street as strong quarterly earnings from banks lifted investor confidence.",
    "The striker scored twice in the second half to send his team into the championship final.",
    "Astronomers using a new space telescope found water vapour in the atmosphere of a distant planet.",
    "Rebels and government troops agreed to a ceasefire after talks brokered by the United Nations.",
]


def wanted(values: dict[str, Any]) -> bool:
    return values.get("news_checkpoint") is not None or values.get("news_api") is not None


def classifier(values: dict[str, Any]) -> tuple[Callable[[list[str]], list[dict[str, Any]]], str]:
    if values.get("news_api"):
        url = values["news_api"].rstrip("/")
        return (lambda texts: post_json(f"{url}/classify", {"texts": texts})), f"the BentoML API at {url}"
    from serving.predictor import NewsPredictor

    runtime = values.get("runtime", "onnx")
    return NewsPredictor(values["news_checkpoint"], runtime).predict, f"checkpoint {values['news_checkpoint']} " \
                                                                       f"({runtime})"


def build(values: dict[str, Any]) -> None:
    import gradio as gr

    classify, source = classifier(values)
    gr.Markdown(f"Topic of a news text (AG News classes). Predictions from {source}.")
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="news text", lines=5, elem_id="news-text",
                              placeholder="Paste a headline and a sentence or two")
            submit = gr.Button("Classify", variant="primary", elem_id="news-submit")
            gr.Examples(EXAMPLES, inputs=text)
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

    submit.click(predict, inputs=text, outputs=[topic, probabilities], api_name="classify_news",
                 concurrency_limit=API_CONCURRENCY)
    text.submit(predict, inputs=text, outputs=[topic, probabilities])
