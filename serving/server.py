"""Start a BentoML service process for a checkpoint and wait until it answers /readyz."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# task -> (BentoML service, its prediction route)
SERVICES = {"news": ("serving.news_service:NewsClassifier", "/classify"),
            "turbofan": ("serving.turbofan_service:TurbofanScorer", "/score")}


class ServerFailed(RuntimeError):
    pass


def service_for(task: str) -> tuple[str, str]:
    if task not in SERVICES:
        raise ValueError(f"no HTTP service for task {task!r}; available: {', '.join(SERVICES)}")
    return SERVICES[task]


def start_server(task: str, ckpt: Path, port: int, runtime: str = "onnx", host: str = "127.0.0.1",
                 max_texts: int | None = None, max_chars: int | None = None, log: Path | None = None,
                 threads: int | None = None) -> subprocess.Popen:
    """`bentoml serve` in its own process group (so it and its worker stop together), bound to `host`."""
    env = {**os.environ, "MODELYARD_CHECKPOINT": str(Path(ckpt).resolve()), "MODELYARD_RUNTIME": runtime,
           "BENTOML_DO_NOT_TRACK": "true"}  # no usage reporting: this machine may have no network at all
    for key, value in (("MODELYARD_MAX_TEXTS", max_texts), ("MODELYARD_MAX_CHARS", max_chars),
                       ("MODELYARD_THREADS", threads)):
        if value is not None:
            env[key] = str(value)
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child from here on
    return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", service_for(task)[0], "--host", host,
                             "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.is_file() else []
            raise ServerFailed(f"the service exited with code {process.returncode}" +
                               (f": {tail[0]}" if tail else ""))
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    stop_server(process)
    raise ServerFailed(f"the service did not become ready at {url} within {timeout:.0f} s")


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
