"""The "Generator" tab: a prompt and decoding settings, the text streaming in as it is decoded, and a chat with the
model (its tokenizer's chat template), from the generator API (`--generator-api`: /generate/stream and OpenAI's
/v1/chat/completions) or a checkpoint in-process (the same continuous batcher). Up to API_CONCURRENCY people run
at once, so that their requests meet in the server's running batch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from apps.tabs.http import API_CONCURRENCY, ApiError
from training.options import Option

TITLE = "Generator"
OPTIONS = (
    Option("generator_checkpoint", Path, None, "generator checkpoint for in-process generation"),
    Option("generator_api", str, None, "generator API base URL (from `modelyard serve generator`)"),
    Option("generator_api_key", str, None, "the generator API's key, when it was started with --api-key"),
)
EXAMPLES = [
    "= Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor.",
    "= The River Thames =\n\nThe River Thames flows through",
    "The castle was built in the twelfth century",
]


def wanted(values: dict[str, Any]) -> bool:
    return values.get("generator_checkpoint") is not None or values.get("generator_api") is not None


async def stream_from_api(url: str, body: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    """(kind, payload) per server-sent event of POST url/generate/stream; a refusal raises ApiError with its reason."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client, client.stream(
                "POST", f"{url}/generate/stream", json=body) as response:
            if response.status_code != 200:
                reason = (await response.aread()).decode(errors="replace")[:300]
                raise ApiError(f"the API refused the request ({response.status_code}): {reason}")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind:
                    data = json.loads(line[len("data: "):])
                    yield kind, data["text"] if kind == "text" else data
    except httpx.HTTPError as exc:
        raise ApiError(f"the API at {url} did not answer: {exc}") from None


async def chat_from_api(url: str, messages: list[dict[str, str]], settings: dict[str, Any],
                        key: str | None = None) -> AsyncIterator[str]:
    """The assistant's reply in pieces, from OpenAI's streamed /v1/chat/completions."""
    import httpx

    body = {"model": "generator", "messages": messages, "stream": True, **settings}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client, client.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                answer = (await response.aread()).decode(errors="replace")
                try:
                    reason = json.loads(answer)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    reason = answer[:300]
                raise ApiError(f"the API refused the request ({response.status_code}): {reason}")
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for choice in json.loads(line[len("data: "):]).get("choices", []):
                        if choice["delta"].get("content"):
                            yield choice["delta"]["content"]
    except httpx.HTTPError as exc:
        raise ApiError(f"the API at {url} did not answer: {exc}") from None


def streamer(values: dict[str, Any]):
    """Functions (prompt, settings) -> async events and (messages, settings) -> async reply pieces, and where the
    text comes from."""
    if values.get("generator_api"):
        url = values["generator_api"].rstrip("/")
        return (lambda prompt, settings: stream_from_api(url, {"prompt": prompt, **settings}),
                lambda messages, settings: chat_from_api(url, messages, settings, values.get("generator_api_key")),
                f"the BentoML API at {url}")
    from serving.decoding import Decoding
    from serving.text_generator import TextGenerator

    runtime = TextGenerator(values["generator_checkpoint"])

    def local(prompt: str, settings: dict[str, Any]):
        return runtime.stream(prompt, Decoding(**{**settings, "stop": tuple(settings["stop"])}))

    async def chat(messages: list[dict[str, str]], settings: dict[str, Any]) -> AsyncIterator[str]:
        ids = runtime.chat_prompt(messages, settings["max_tokens"])
        ends = (runtime.end_of_turn,) if runtime.end_of_turn is not None else ()
        stream = runtime.open([(ids, Decoding(max_new_tokens=settings["max_tokens"],
                                              temperature=settings["temperature"], stop_token_ids=ends))])[0]
        try:
            async for kind, payload in stream:
                if kind == "text":
                    yield payload
        finally:
            stream.close()

    return local, chat, f"checkpoint {values['generator_checkpoint']} (in-process, {runtime.runtime} runtime)"


def build(values: dict[str, Any]) -> None:
    import gradio as gr

    from serving.refusal import Refused

    stream, chat, source = streamer(values)
    gr.Markdown(f"Continue a text with the fine-tuned language model, or chat with it below; the text appears as "
                f"it is decoded. Generation by {source}.")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="prompt", lines=4, elem_id="generator-prompt",
                                placeholder="The first words of a Wikipedia-style article")
            with gr.Row():
                max_new = gr.Slider(1, 256, value=80, step=1, label="max new tokens", elem_id="generator-max-new")
                temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature (0: greedy)",
                                        elem_id="generator-temperature")
            with gr.Row():
                top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0: off)")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="top-p")
                penalty = gr.Slider(1, 2, value=1.1, step=0.05, label="repetition penalty")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="seed (empty: random)", elem_id="generator-seed")
                stop = gr.Textbox(label="stop string (optional)", max_lines=1)
            submit = gr.Button("Generate", variant="primary", elem_id="generator-submit")
            gr.Examples(EXAMPLES, inputs=prompt)
        with gr.Column():
            output = gr.Textbox(label="generated text", lines=14, interactive=False, elem_id="generator-output")
            status = gr.Markdown(elem_id="generator-status")

    async def run(text: str, tokens: float, temp: float, k: float, p: float, rep: float, seed_value: Any,
                  stop_text: str):
        if not text or not text.strip():
            raise gr.Error("Enter a prompt first.")
        settings = {"max_new_tokens": int(tokens), "temperature": float(temp), "top_k": int(k), "top_p": float(p),
                    "repetition_penalty": float(rep), "stop": [stop_text] if stop_text else [],
                    "seed": int(seed_value) if seed_value not in (None, "") else None}
        generated = ""
        try:
            async for kind, payload in stream(text, settings):
                if kind == "text":
                    generated += payload
                    yield generated, "generating…"
                elif kind == "done":
                    yield generated, (f"finished: {payload['finish_reason']}; {payload['prompt_tokens']} prompt "
                                      f"tokens, {payload['generated_tokens']} generated; first token after "
                                      f"{payload['time_to_first_token_ms']:.0f} ms")
        except (ApiError, Refused) as exc:
            raise gr.Error(str(exc)) from None

    inputs = [prompt, max_new, temperature, top_k, top_p, penalty, seed, stop]
    submit.click(run, inputs=inputs, outputs=[output, status], api_name="generate_text",
                 concurrency_limit=API_CONCURRENCY)

    async def reply(message: str, history: list[dict[str, Any]], tokens: float, temp: float):
        messages = [{"role": turn["role"], "content": _text(turn["content"])} for turn in history
                    if turn.get("role") in ("user", "assistant", "system")]
        messages.append({"role": "user", "content": message})
        answer = ""
        try:
            async for piece in chat(messages, {"max_tokens": int(tokens), "temperature": float(temp)}):
                answer += piece
                yield answer
        except (ApiError, Refused) as exc:
            raise gr.Error(str(exc)) from None

    gr.Markdown("### Chat (the model's chat template, OpenAI's /v1/chat/completions)")
    gr.ChatInterface(reply, chatbot=gr.Chatbot(elem_id="generator-chat", height=320),
                     textbox=gr.Textbox(placeholder="Ask something", elem_id="generator-chat-input",
                                        submit_btn=True),
                     additional_inputs=[gr.Slider(1, 256, value=64, step=1, label="max new tokens", render=False),
                                        gr.Slider(0, 2, value=0.3, step=0.05, label="temperature (0: greedy)",
                                                  render=False)],
                     additional_inputs_accordion=gr.Accordion("chat settings", open=False, render=False),
                     concurrency_limit=API_CONCURRENCY, api_name="chat", fill_height=False)


def _text(content: Any) -> str:
    """A chat turn's text (Gradio keeps it as a string, or as a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
