"""OpenAI's API on the generator service, driven by the official `openai` package over real HTTP (a `bentoml serve`
process over a tiny llama with SmolLM2's tokenizer and chat template, on the onnx runtime, guarded by an API key)."""

import json
import re
import threading
import time
import urllib.request

import openai
import pytest
import torch

from serving.server import start_server, stop_server, wait_ready
from tests.conftest import assert_api_honours_its_document, free_port

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(chat_ckpt, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "serve.log"
    process = start_server("generator", chat_ckpt, port, "onnx", log=log,
                           options={"max_concurrent": 4, "max_new_tokens": 64, "api_key": KEY})
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_checkpoint_and_its_alias(client, chat_ckpt):
    ids = [model.id for model in client.models.list()]
    assert ids == [chat_ckpt.name, "generator"]
    assert client.models.list().data[0].owned_by == "modelyard"


def test_completions_one_set_of_n_choices_per_prompt(client):
    answer = client.completions.create(model="generator", prompt=["The castle was", "The band"], max_tokens=6, n=2,
                                       temperature=0)
    assert answer.object == "text_completion" and [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.choices[0].text == answer.choices[1].text  # greedy: both choices of a prompt agree
    assert all(c.finish_reason in ("length", "stop") and c.text for c in answer.choices)
    assert answer.usage.prompt_tokens == 3 + 2 and answer.usage.completion_tokens <= 4 * 6
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    alone = client.completions.create(model="generator", prompt="The band", max_tokens=6, temperature=0)
    assert alone.choices[0].text == answer.choices[2].text


def test_a_prompt_of_token_ids_is_the_same_as_its_text(client, chat_ckpt):
    from training.checkpoint import load_tokenizer, read_manifest

    tokenizer = load_tokenizer(chat_ckpt, read_manifest(chat_ckpt), "tokenizer")
    ids = tokenizer("The castle was", add_special_tokens=False)["input_ids"]
    as_ids = client.completions.create(model="generator", prompt=ids, max_tokens=6, temperature=0)
    as_text = client.completions.create(model="generator", prompt="The castle was", max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text


def test_echoed_prompt_logprobs_are_the_models_own_log_softmax(client, chat_ckpt):
    """What lm-eval's loglikelihood requests read: each prompt token's log-probability, echo with max_tokens 0."""
    from training.checkpoint import load_checkpoint, load_tokenizer
    from training.models import build_model

    manifest, weights = load_checkpoint(chat_ckpt)
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    tokenizer = load_tokenizer(chat_ckpt, manifest, "tokenizer")
    prompt = "The castle was built in the twelfth century"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    expected = expected.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)

    answer = client.completions.create(model="generator", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = answer.choices[0]
    assert choice.text == prompt and answer.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.token_logprobs) == len(ids)
    assert torch.allclose(torch.tensor(logprobs.token_logprobs[1:]), expected, atol=1e-4)
    assert "".join(logprobs.tokens) == prompt and logprobs.text_offset[1] == len(logprobs.tokens[0])
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    # a generated token's log-probability is reported too, and under greedy it is the best alternative's
    greedy = client.completions.create(model="generator", prompt=prompt, max_tokens=3, logprobs=1, temperature=0)
    for token, logprob, top in zip(greedy.choices[0].logprobs.tokens, greedy.choices[0].logprobs.token_logprobs,
                                   greedy.choices[0].logprobs.top_logprobs, strict=True):
        assert top == {token: pytest.approx(logprob)}


def test_stop_strings_and_seeds(client):
    body = dict(model="generator", prompt="The castle was", max_tokens=30, temperature=0)
    whole = client.completions.create(**body).choices[0].text
    word = whole.split()[2]
    stopped = client.completions.create(**body, stop=[word, "\u2603"]).choices[0]
    assert stopped.finish_reason == "stop" and word not in stopped.text and whole.startswith(stopped.text)
    sampled = [client.completions.create(model="generator", prompt="The band", max_tokens=20, temperature=1.0,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    two = client.completions.create(model="generator", prompt="The band", max_tokens=20, temperature=1.0, seed=7,
                                    n=2).choices
    assert two[0].text == sampled[0] and two[1].text != two[0].text  # choice i draws with seed + i


def test_presence_and_frequency_penalties_discourage_repeating(client):
    """Greedy text from the tiny model repeats its tokens; OpenAI's penalties subtract from each token already
    generated, so they come back less often."""
    def tokens(**penalties) -> list[str]:
        answer = client.completions.create(model="generator", prompt="The castle was", max_tokens=24, temperature=0,
                                           logprobs=0, stop=["\u2603"], **penalties)
        return answer.choices[0].logprobs.tokens

    plain = tokens()
    assert len(set(plain)) < len(plain) - 4  # it repeats itself
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = tokens(**penalty)
        assert len(set(penalised)) > len(set(plain)), (penalty, plain, penalised)


def test_completion_streams_chunks_and_usage(client):
    chunks = list(client.completions.create(model="generator", prompt="The castle was", max_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    whole = client.completions.create(model="generator", prompt="The castle was", max_tokens=12, temperature=0)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 3 and "".join(texts) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_renders_the_template_and_streams(client, chat_ckpt):
    from training.checkpoint import load_tokenizer, read_manifest

    tokenizer = load_tokenizer(chat_ckpt, read_manifest(chat_ckpt), "tokenizer")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    answer = client.chat.completions.create(model="generator", messages=messages, max_tokens=10, temperature=0,
                                            logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and choice.message.role == "assistant" and choice.message.content
    assert answer.usage.prompt_tokens == len(rendered)
    assert len(choice.logprobs.content) == answer.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)
    chunks = list(client.chat.completions.create(model="generator", messages=messages, max_completion_tokens=10,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content


def test_chat_ends_at_the_templates_end_of_turn(chat_ckpt):
    from serving.text_generator import TextGenerator

    runtime = TextGenerator(chat_ckpt)
    assert runtime.tokenizer.convert_ids_to_tokens(runtime.end_of_turn) == "<|im_end|>"


def test_refusals_raise_the_clients_typed_errors(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.completions.create(model="generator", prompt="x", max_tokens=65)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="generator", messages=[{"role": "user", "content": "x"}], top_p=0)
    assert bad.value.body["param"] == "top_p" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="at most 512") as long:
        client.completions.create(model="generator", prompt="the river " * 300, max_tokens=2)
    assert long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.RateLimitError):  # 5 choices, 4 places
        client.completions.create(model="generator", prompt="x", max_tokens=2, n=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    request = urllib.request.Request(f"{server}/v1/completions", data=b"x" * 1_000_001, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as too_large:
        urllib.request.urlopen(request, timeout=30)
    assert too_large.value.code == 413 and json.loads(too_large.value.read())["error"]["code"] == "request_too_large"


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {m["name"]: float(m["value"]) for m in re.finditer(
        r'^(?P<name>(modelyard:|modelyard_generations_total)\S*) (?P<value>\S+)$', text, re.MULTILINE)}


def test_a_client_that_leaves_a_stream_stops_its_generation_and_metrics_count(client, server):
    before = metrics(server)
    stream = client.completions.create(model="generator", prompt="The castle was", max_tokens=64, temperature=0,
                                       stop=["\u2603"], stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 20
    while metrics(server).get('modelyard_generations_total{finish_reason="cancelled"}', 0) <= \
            before.get('modelyard_generations_total{finish_reason="cancelled"}', 0):
        assert time.monotonic() < deadline, metrics(server)
        time.sleep(0.1)
    client.completions.create(model="generator", prompt="The castle was", max_tokens=5, temperature=0)
    after = metrics(server)
    assert after["modelyard:prompt_tokens_total"] >= before.get("modelyard:prompt_tokens_total", 0) + 3
    assert after["modelyard:generation_tokens_total"] >= before.get("modelyard:generation_tokens_total", 0) + 5
    assert after["modelyard:time_to_first_token_seconds_count"] > before.get(
        "modelyard:time_to_first_token_seconds_count", 0)
    assert after["modelyard:e2e_request_latency_seconds_count"] >= 2
    assert "modelyard:num_requests_running" in after and "modelyard:num_requests_waiting" in after


def test_a_chats_next_turn_resumes_from_the_prefix_cache(client, server):
    """The second turn's prompt holds the first's: only the rest is prefilled, and OpenAI's usage says how much
    was cached (prompt_tokens_details.cached_tokens), as /metrics does in vLLM's names."""
    before = metrics(server)
    turn = [{"role": "system", "content": "You answer in one word about rivers."},
            {"role": "user", "content": "Name a river."}]
    first = client.chat.completions.create(model="generator", messages=turn, max_tokens=8, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And another?"}]
    second = client.chat.completions.create(model="generator", messages=turn, max_tokens=8, temperature=0)
    # all of the first turn's prompt, but its last token ("\n" after the assistant's header) where BPE merges it with
    # the reply's first characters
    assert first.usage.prompt_tokens - 1 <= second.usage.prompt_tokens_details.cached_tokens <= \
        first.usage.prompt_tokens
    after = metrics(server)
    hits = after["modelyard:prefix_cache_hits_total"] - before.get("modelyard:prefix_cache_hits_total", 0)
    queries = after["modelyard:prefix_cache_queries_total"] - before.get("modelyard:prefix_cache_queries_total", 0)
    assert hits == first.usage.prompt_tokens_details.cached_tokens + second.usage.prompt_tokens_details.cached_tokens
    assert queries == first.usage.prompt_tokens + second.usage.prompt_tokens


def test_all_shapes_share_one_running_batch(client, chat_ckpt, server):
    """A chat, a completion with n=2 and /generate at once: the running gauge sees them together."""
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(metrics(server).get("modelyard:num_requests_running", 0))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        threads = [threading.Thread(target=lambda: client.completions.create(
                       model="generator", prompt="The castle was", max_tokens=60, n=2, stop=["\u2603"],
                       temperature=0)),
                   threading.Thread(target=lambda: client.chat.completions.create(
                       model="generator", messages=[{"role": "user", "content": "hi"}], max_tokens=60,
                       temperature=0))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        done.set()
        watcher.join()
    assert max(seen) >= 3, seen


def test_openai_routes_honour_their_openapi_document(chat_ckpt, tmp_path):
    """Fuzzed on a server of its own (every route, /generate too), short generations and room for every request.
    Whether a prompt fits depends on how it tokenizes, which no schema can say, so the check that valid data is
    accepted is left out."""
    port, log = free_port(), tmp_path / "serve.log"
    process = start_server("generator", chat_ckpt, port, "torch", log=log,
                           options={"max_new_tokens": 8, "max_concurrent": 64})
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        assert_api_honours_its_document(f"http://127.0.0.1:{port}", max_examples=30,
                                        exclude_checks=("positive_data_acceptance",))
    finally:
        stop_server(process)


def test_gradio_chat_streams_a_reply_in_a_headless_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import running_app

    with running_app(tmp_path, "--generator-api", server, "--generator-api-key", KEY) as url:
        wait = WebDriverWait(browser, 90, poll_frequency=0.3)
        browser.set_window_size(1280, 2200)
        browser.get(url)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generator-chat-input textarea"))
        box.send_keys("Name a river in England.")
        box.send_keys(Keys.ENTER)

        def replies(driver):
            bubbles = driver.find_elements(By.CSS_SELECTOR, "#generator-chat [data-testid='bot']")
            texts = [(b.get_attribute("textContent") or "").strip() for b in bubbles]
            return [t for t in texts if t] or None

        texts = wait.until(replies)
        time.sleep(1)  # the reply streams in; let it finish before the screenshot
        browser.save_screenshot(str(tmp_path / "generator-chat.png"))
        user = [(u.get_attribute("textContent") or "") for u in browser.find_elements(
            By.CSS_SELECTOR, "#generator-chat [data-testid='user']")]
        assert any("Name a river" in u for u in user) and texts[-1]
