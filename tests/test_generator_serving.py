"""The generation API over real HTTP (a `bentoml serve` process), its continuous batcher in-process, and the
Generator tab in a real headless Chromium."""

import asyncio
import contextlib
import http.client
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.continuous_batching import ContinuousBatcher, Generation
from serving.decoding import Decoding
from serving.server import start_server, stop_server, wait_ready
from serving.text_generator import TextGenerator
from tests.conftest import LEARNED_BPE, free_port, post, run_cli, running_app, wait_for

PROMPTS = ["The castle was", "In 1900 the river reached", "The band", "The governor of the city moved to the"]


@pytest.fixture(scope="module")
def api(generator_ckpt, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "serve.log"
    process = start_server("generator", generator_ckpt, port, "torch", log=log,
                           options={"max_concurrent": 3, "max_prompt_tokens": 64, "max_new_tokens": 200})
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def stream_events(url: str, body: dict, stop_after: int | None = None) -> tuple[int, list[tuple[str, dict]]]:
    """POST url/generate/stream; the status and the (event, data) pairs read (only `stop_after` of them, then the
    connection is dropped, as a client that goes away)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/generate/stream", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        return response.status, [("error", json.loads(response.read()))]
    assert response.getheader("content-type").startswith("text/event-stream")
    events, kind = [], None
    while stop_after is None or len(events) < stop_after:
        line = response.readline().decode()
        if not line:
            break
        if line.startswith("event: "):
            kind = line.strip().split(": ", 1)[1]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
            if kind == "done":
                break
    connection.close()
    return response.status, events


def test_generate_answers_text_counts_and_finish_reason(api):
    status, body = post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 12, "temperature": 0})
    assert status == 200, body
    assert set(body) == {"text", "finish_reason", "prompt_tokens", "generated_tokens", "time_to_first_token_ms"}
    assert body["finish_reason"] in ("length", "stop") and 1 <= body["generated_tokens"] <= 12 and body["text"]
    again = post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 12, "temperature": 0})[1]
    assert again["text"] == body["text"]  # greedy is deterministic
    seeded = [post(f"{api}/generate", {"prompt": "The band", "max_new_tokens": 20, "seed": 11, "temperature": 1.2})[1]
              ["text"] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_stop_strings_end_the_text(api):
    body = post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 60, "temperature": 0})[1]
    word = body["text"].split()[2]  # a word the greedy continuation reaches
    stopped = post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 60, "temperature": 0,
                                       "stop": [word]})[1]
    assert stopped["finish_reason"] == "stop" and word not in stopped["text"]
    assert body["text"].startswith(stopped["text"])


def test_stream_sends_the_text_as_it_is_decoded(api):
    request = {"prompt": "In 1900 the river reached", "max_new_tokens": 30, "temperature": 0}
    status, events = stream_events(api, request)
    assert status == 200
    pieces = [data["text"] for kind, data in events if kind == "text"]
    assert len(pieces) > 3 and events[-1][0] == "done"
    assert "".join(pieces) == events[-1][1]["text"] == post(f"{api}/generate", request)[1]["text"]


def test_concurrent_requests_get_the_answers_they_would_get_alone(api):
    alone = [post(f"{api}/generate", {"prompt": p, "max_new_tokens": 25, "temperature": 0})[1]["text"]
             for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS) - 1) as pool:  # max_concurrent is 3
        together = list(pool.map(lambda p: post(f"{api}/generate", {"prompt": p, "max_new_tokens": 25,
                                                                     "temperature": 0})[1]["text"], PROMPTS[:3]))
    assert together == alone[:3]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "x", "max_new_tokens": 201}, "max_new_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"prompt": "x", "seed": "1"}, "seed"),
    ({"prompt": "x", "beams": 4}, "beams"),
    ({"prompt": "the river " * 100}, "prompt"),  # beyond max_prompt_tokens
])
def test_bad_parameters_are_400_with_the_reason(api, body, field):
    for route in ("/generate", "/generate/stream"):
        status, answer = post(f"{api}{route}", body)
        assert status == 400, (route, answer)
        detail = json.loads(answer)["detail"][0]
        assert field in detail["loc"] and detail["msg"]


@pytest.fixture(scope="module")
def slow_ckpt(wikitext_dir, tmp_path_factory) -> Path:
    """GPT-2 `small` after one step: about 5 ms a token here, so 480 tokens outlast the test's holders by seconds
    (the tiny model writes 200 in a quarter of a second, before a fourth client can arrive)."""
    out = tmp_path_factory.mktemp("generator-slow") / "ckpt"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "small",
                     "--block-size", "64", "--max-steps", "1", env=LEARNED_BPE)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@contextlib.contextmanager
def serving(ckpt: Path, options: dict, logs: Path) -> Iterator[str]:
    port, log = free_port(), logs / "serve.log"
    process = start_server("generator", ckpt, port, "torch", log=log, options=options)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def slow_api(slow_ckpt, tmp_path_factory):
    with serving(slow_ckpt, {"max_concurrent": 3, "max_new_tokens": 480}, tmp_path_factory.mktemp("logs")) as url:
        yield url


def finished_counts(url: str) -> dict[str, float]:
    """modelyard_generations_total per finish_reason, from the server's Prometheus /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {m["reason"]: float(m["value"]) for m in re.finditer(
        r'^modelyard_generations_total\{finish_reason="(?P<reason>\w+)"\} (?P<value>\S+)$', text, re.MULTILINE)}


def test_too_many_generations_get_429_and_a_client_that_leaves_frees_its_place(slow_api):
    long = {"prompt": "The castle was", "max_new_tokens": 480, "temperature": 0, "stop": ["\u2603"]}
    before = finished_counts(slow_api)
    # Three clients hold the three places; each reads one event and stays connected.
    holders = [stream_events_holding(slow_api, long) for _ in range(3)]
    try:
        status, answer = post(f"{slow_api}/generate", {"prompt": "x", "max_new_tokens": 5})
        assert status == 429 and "generations are running" in json.loads(answer)["error"]
    finally:
        for connection in holders:
            connection.close()  # the clients go away mid-stream
    deadline = time.monotonic() + 20
    while finished_counts(slow_api).get("cancelled", 0) - before.get("cancelled", 0) < 3:
        assert time.monotonic() < deadline, f"the abandoned generations were not cancelled: {finished_counts(slow_api)}"
        time.sleep(0.1)
    after = finished_counts(slow_api)
    assert after.get("length", 0) == before.get("length", 0)  # none ran to its end
    with ThreadPoolExecutor(3) as pool:  # all three places are free again
        answers = list(pool.map(lambda _: post(f"{slow_api}/generate", {"prompt": "x", "max_new_tokens": 5}),
                                range(3)))
    assert [s for s, _ in answers] == [200] * 3
    counted = finished_counts(slow_api)
    assert sum(counted.values()) - sum(after.values()) == 3


def running_gauge(url: str, name: str = "running") -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        found = re.search(rf"^modelyard:num_requests_{name} (\S+)$", response.read().decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def waiting_gauge(url: str) -> float:
    return running_gauge(url, "waiting")


def test_app_users_pressing_generate_together_meet_in_the_servers_batch(slow_api, tmp_path):
    """Three gradio_client users at once (the API's max_concurrent): the API sees them running together (Gradio's
    default would queue them one behind another)."""
    from gradio_client import Client

    with running_app(tmp_path, "--generator-api", slow_api) as url:
        client = Client(url, verbose=False)
        jobs = [client.submit("The castle was", 256, 0.0, 0, 1.0, 1.0, 0, "\u2603", api_name="/generate_text")
                for _ in range(3)]
        seen = []
        while not all(job.done() for job in jobs):
            seen.append(running_gauge(slow_api))
            time.sleep(0.05)
        results = [job.result() for job in jobs]
    assert max(seen) >= 3, seen
    assert all("finished" in status for _, status in results)


def stream_events_holding(url: str, body: dict) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/generate/stream", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"event: ")
    return connection


def test_max_batch_and_threads_are_what_the_engine_runs_with(slow_ckpt, tmp_path):
    """`serve generator --max-batch 2 --threads 2` (torch's default here is 1): /metrics states the engine as it
    runs (torch's thread count read back), and of three generations at once two decode while the third waits."""
    options = {"max_concurrent": 4, "max_batch": 2, "threads": 2, "max_new_tokens": 480}
    with serving(slow_ckpt, options, tmp_path) as url:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'modelyard:engine_config_info{max_batch="2",runtime="torch",threads="2"} 1.0' in text, text
        long = {"prompt": "The castle was", "max_new_tokens": 480, "temperature": 0, "stop": ["\u2603"]}
        held = []
        try:
            for _ in range(3):  # sent, never read: the third has no event to read until a place frees
                host, port = url.removeprefix("http://").split(":")
                held.append(http.client.HTTPConnection(host, int(port), timeout=60))
                held[-1].request("POST", "/generate/stream", json.dumps(long), {"Content-Type": "application/json"})
            wait_for(lambda: (running_gauge(url), waiting_gauge(url)) == (2.0, 1.0), "two running, one waiting", 30)
        finally:
            for connection in held:
                connection.close()


def test_openai_chat_on_a_model_without_a_chat_template_is_400(api):
    import openai

    client = openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="generator", messages=[{"role": "user", "content": "hi"}])
    # its completions work, greedy as /generate
    text = client.completions.create(model="generator", prompt="The castle was", max_tokens=12,
                                     temperature=0).choices[0].text
    assert text == post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 12, "temperature": 0,
                                            "repetition_penalty": 1.0})[1]["text"]


# --- the batcher in-process ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_fp32(generator_ckpt, tmp_path_factory):
    """The served checkpoint with its decoder exported in fp32 (the onnx runtime, as exact as torch)."""
    import shutil

    out = tmp_path_factory.mktemp("generator-onnx") / "ckpt"
    shutil.copytree(generator_ckpt, out)
    result = run_cli("export", out, "--weights", "fp32")
    assert result.returncode == 0 and "decoder.onnx" in result.stdout, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_sequences_join_and_leave_one_running_batch_and_decode_as_alone(exported_fp32, runtime, monkeypatch):
    import serving.onnx_decoder

    monkeypatch.setattr(serving.onnx_decoder, "CHUNK", 8)  # the onnx cache outgrows its buffers again and again
    served = TextGenerator(exported_fp32, runtime=runtime)
    tokenizer, model = served.tokenizer, TextGenerator(exported_fp32, runtime="torch").decoder.model
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=15 + 3 * len(expected),
                             do_sample=False, eos_token_id=None, pad_token_id=tokenizer.eos_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    for joining in (True, False):  # each arriving while the others decode; all arriving together (one prefill)
        # no stop tokens: every sequence runs to its max_new_tokens, like generate() above
        batcher = ContinuousBatcher(served.decoder, tokenizer, stop_ids=set(), max_batch=8)
        results, finished = {}, threading.Event()
        started, queued = [threading.Event() for _ in PROMPTS], [threading.Event() for _ in PROMPTS]

        def collector(i, results=results, finished=finished, started=started, queued=queued, joining=joining):
            def emit(kind, payload):
                if kind == "token":
                    started[i].set()
                    if joining and i + 1 < len(PROMPTS):  # (on the engine thread) hold it until the next prompt
                        assert queued[i + 1].wait(30)     # is queued: that one joins while this one decodes
                if kind == "done":
                    results[i] = payload
                    if len(results) == len(PROMPTS):
                        finished.set()
            return emit

        for i, prompt in enumerate(PROMPTS):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            decoding = Decoding(max_new_tokens=15 + 3 * i, temperature=0, logprobs=0)  # an event for every token
            batcher.submit(Generation(ids, decoding, collector(i)))
            queued[i].set()
            assert not joining or started[i].wait(30)
        assert finished.wait(60)
        assert [results[i]["text"] for i in range(len(PROMPTS))] == expected, joining
        tokens = sum(r["generated_tokens"] for r in results.values())
        assert batcher.steps < tokens - len(PROMPTS)  # fewer forward passes than one per token: decoded together
        assert batcher.batched_rows / batcher.steps > 1.2


def _generate_all(batcher: ContinuousBatcher, prompts: list[list[int]], new_tokens: int = 12) -> list[dict]:
    """Each prompt's summary with its tokens' log-probabilities (`logprobs`), submitted one after another (each
    waits for the one before to finish)."""
    summaries = []
    for ids in prompts:
        done: list[dict] = []
        logprobs: list[float] = []
        finished = threading.Event()

        def emit(kind, payload, done=done, logprobs=logprobs, finished=finished):
            if kind == "token":
                logprobs.append(payload.logprob)
            if kind == "done":
                done.append({**payload, "logprobs": logprobs})
                finished.set()
        batcher.submit(Generation(ids, Decoding(max_new_tokens=new_tokens, temperature=0, logprobs=0), emit))
        assert finished.wait(60)
        summaries.append(done[0])
    return summaries


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_prompts_that_start_alike_resume_from_the_prefix_cache_and_decode_as_alone(exported_fp32, runtime):
    served = TextGenerator(exported_fp32, runtime=runtime)
    tokenizer = served.tokenizer
    ids = tokenizer("The governor of the city moved to the river", add_special_tokens=False)["input_ids"]
    other = tokenizer("In 1900 the band", add_special_tokens=False)["input_ids"]
    assert other[0] != ids[0]
    prompts = [ids, ids[:5] + other, ids, other, ids + other]  # shares 5, all but 1, none, all of the first
    cached = ContinuousBatcher(served.decoder, tokenizer, stop_ids=set(), prefix_cache_bytes=64 << 20)
    got = _generate_all(cached, prompts)
    assert [s["cached_tokens"] for s in got] == [0, 5, len(ids) - 1, 0, len(ids)]
    plain = ContinuousBatcher(served.decoder, tokenizer, stop_ids=set(), prefix_cache_bytes=0)
    expected = _generate_all(plain, prompts)
    assert [s["cached_tokens"] for s in expected] == [0] * len(prompts)
    assert [s["text"] for s in got] == [s["text"] for s in expected]
    # the test model's greedy text hardly depends on the prompt: the log-probabilities do
    np.testing.assert_allclose([s["logprobs"] for s in got], [s["logprobs"] for s in expected], atol=1e-4)
    # the cache holds whole prompts; one that another extends is dropped
    assert len(cached.prefixes) == 3 and ids not in cached.prefixes
    # prompts of one length resuming one cache go through the model together: one token to go, and three
    prefix = served.decoder.cached_row(served.decoder.prefill([ids])[1], 0)[0]
    for tail in (1, 3):
        together = [ids + other[i:i + tail] for i in range(3)]
        resumed, rows = served.decoder.resume(prefix, len(ids), together)
        fresh, _ = served.decoder.prefill(together)
        assert len(rows[1]) == 3 and len(resumed) == 3
        for a, b in zip(resumed, fresh, strict=True):
            torch.testing.assert_close(a[-1], b[-1], atol=1e-4, rtol=0)


def test_the_prefix_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    from serving.prefix_cache import PrefixCache

    cache = PrefixCache(max_bytes=300)
    cache.add([1, 2, 3], "a", 100)
    cache.add([4, 5, 6], "b", 100)
    cache.add([7, 8], "c", 100)
    assert cache.longest([1, 2, 3]) == ("a", 2)  # all but the last token; [1, 2, 3] is now the most recent
    assert cache.longest([1, 2, 9, 9]) == ("a", 2) and cache.longest([4, 9]) == ("b", 1)
    assert cache.longest([9, 1, 2]) is None and cache.longest([1]) is None
    cache.add([1, 2, 3, 4], "a+", 100)  # holds [1, 2, 3]'s prefix: that one goes
    assert [1, 2, 3] not in cache and cache.bytes == 300
    cache.add([9, 9], "d", 100)  # over the budget: the least recently used ([7, 8]) goes
    assert [7, 8] not in cache and [4, 5, 6] in cache and cache.bytes == 300
    cache.add([5], "too big", 301)
    assert [5] not in cache and len(cache) == 3


def test_a_cancelled_generation_leaves_the_batch(generator_ckpt):
    runtime = TextGenerator(generator_ckpt)
    tokenizer = runtime.tokenizer
    events = []
    done = threading.Event()

    def emit(kind: str, payload: dict) -> None:
        events.append((kind, payload))
        if [k for k, _ in events].count("text") == 3:
            generation.cancel()  # the caller leaves after its third piece, while the batcher decodes
        if kind == "done":
            done.set()

    generation = Generation(tokenizer("The castle", add_special_tokens=False)["input_ids"],
                            Decoding(max_new_tokens=200, temperature=0), emit)
    runtime.batcher.stop_ids = set()
    runtime.batcher.submit(generation)
    assert done.wait(30)
    assert events[-1][1]["finish_reason"] == "cancelled" and events[-1][1]["generated_tokens"] < 10
    assert runtime.batcher.active == 0


def test_a_place_is_held_from_admission_to_the_last_event_read(generator_ckpt):
    """The batcher counts a row only once its prefill is done; the places count every admitted caller, so a fourth
    is refused the moment three have started, and a place frees when its caller reads `done` or leaves."""
    from serving.refusal import Refused

    runtime = TextGenerator(generator_ckpt, max_concurrent=3)
    decoding = Decoding(max_new_tokens=100, temperature=0)

    async def scenario() -> list[str]:
        streams = [runtime.stream("The castle was", decoding) for _ in range(3)]
        for stream in streams:
            await anext(stream)
        seen = []
        try:
            await runtime.generate("The band", Decoding(max_new_tokens=3))
        except Refused as refused:
            seen.append(f"refused {refused.status}")
        await streams[0].aclose()  # a caller leaves
        seen.append((await runtime.generate("The band", Decoding(max_new_tokens=3)))["finish_reason"])
        async for _ in streams[1]:  # a caller reads to the end
            pass
        seen.append(str(runtime.streams))
        await streams[2].aclose()
        seen.append(str(runtime.streams))
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "refused 429" and seen[1] in ("length", "stop") and seen[2:] == ["1", "0"]


# --- the app ------------------------------------------------------------------------------------------------------

# Records every text the output box shows, as the page changes it (Gradio sets the value property, which a
# MutationObserver does not see).
WATCH_OUTPUT = """
    window.outputsShown = [];
    setInterval(() => {
        const box = document.querySelector('#generator-output textarea');
        const seen = window.outputsShown;
        if (box && seen[seen.length - 1] !== box.value) seen.push(box.value);
    }, 2);
"""


def test_gradio_generator_tab_streams_text_in_a_headless_browser(api, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_app(tmp_path, "--generator-api", api) as url:
        wait = WebDriverWait(browser, 90, poll_frequency=0.3)
        browser.get(url)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generator-prompt textarea"))
        prompt.send_keys("The castle was")
        browser.execute_script(WATCH_OUTPUT)
        browser.find_element(By.CSS_SELECTOR, "#generator-submit").click()
        wait.until(lambda d: "finished" in d.find_element(By.CSS_SELECTOR, "#generator-status").text)
        text = browser.find_element(By.CSS_SELECTOR, "#generator-output textarea").get_attribute("value")
        status = browser.find_element(By.CSS_SELECTOR, "#generator-status").text
        generated = int(re.search(r"(\d+) generated", status).group(1))
        assert len(text.split()) >= 5 and 5 <= generated <= 80  # the tab's default: at most 80 new tokens
        shown = [value for value in browser.execute_script("return window.outputsShown") if value]
        assert len(shown) >= 3 and all(text.startswith(value) for value in shown), shown  # grew piece by piece
        browser.save_screenshot(str(tmp_path / "generator-tab.png"))


def test_the_app_generates_in_process_from_a_checkpoint_as_the_api_does(api, generator_ckpt, tmp_path):
    """`modelyard app --generator-checkpoint CKPT` decodes in its own process (no API): greedy, it answers what the
    API serving the same checkpoint answers."""
    from gradio_client import Client

    status, body = post(f"{api}/generate", {"prompt": "The castle was", "max_new_tokens": 12, "temperature": 0,
                                            "repetition_penalty": 1.0})
    assert status == 200
    served = body["text"]
    with running_app(tmp_path, "--generator-checkpoint", generator_ckpt) as url:
        text, state = Client(url, verbose=False).predict("The castle was", 12, 0.0, 0, 1.0, 1.0, 0, "",
                                                         api_name="/generate_text")
    assert served and served in text and "12 generated" in state, (text, state)


def test_bentomls_client_lists_and_calls_whole_and_streamed_generation(api):
    import bentoml
    from bentoml.exceptions import BentoMLException

    request = {"prompt": "The castle was", "max_new_tokens": 10, "temperature": 0}
    with bentoml.SyncHTTPClient(api) as client:
        assert sorted(client.endpoints) == ["generate", "generate_stream"]
        whole = client.generate(**request)
        streamed = "".join(client.generate_stream(**request))
        with pytest.raises(BentoMLException, match="greater than or equal to 0"):
            client.generate(prompt="x", temperature=-1)
    assert whole["text"] == post(f"{api}/generate", request)[1]["text"] and whole["generated_tokens"] == 10
    events = [json.loads(line[len("data: "):]) for line in streamed.splitlines() if line.startswith("data: ")]
    assert "".join(e["text"] for e in events[:-1]) == events[-1]["text"] == whole["text"]
