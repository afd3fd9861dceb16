"""Start a BentoML service process for a checkpoint and wait until it answers /readyz.

Each task's service is the module its spec names (training.tasks.specs) that declares SERVICE (its class name),
ROUTE (the prediction route) and OPTIONS (its settings, read from the environment this module hands over).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

from serving.settings import settings_env
from training.processes import dies_with_parent
from training.tasks.specs import task_specs


class ServerFailed(RuntimeError):
    pass


def startup_failure(log: Path | None, offset: int = 0) -> str | None:
    """The error that stopped the service's startup (the last `SomeError: message` line before BentoML's
    STARTUP_FAILED) in what the log gained after `offset` bytes, or None while none is logged."""
    if log is None or not log.is_file():
        return None
    with open(log, "rb") as file:
        file.seek(offset)
        lines = file.read().decode(errors="replace").splitlines()
    failed = next((i for i, line in enumerate(lines) if STARTUP_FAILED in line), None)
    if failed is None:
        return None
    errors = [line for line in lines[:failed] if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return errors[-1] if errors else lines[failed].strip()


def served_tasks() -> list[str]:
    return [spec.name for spec in task_specs() if spec.service]


def service_path(task: str) -> str:
    services = {spec.name: spec.service for spec in task_specs() if spec.service}
    if task not in services:
        raise ValueError(f"no HTTP service for task {task!r}; available: {', '.join(services)}")
    return services[task]


def service_module(task: str) -> ModuleType:
    return importlib.import_module(service_path(task))


def start_server(task: str, ckpt: Path, port: int, runtime: str = "onnx", host: str = "127.0.0.1",
                 options: dict[str, Any] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`bentoml serve` in its own process group (so it and its worker stop together), bound to `host`; it ends
    when this process dies, however it dies. `options`: the service's declared OPTIONS by name."""
    env = {**os.environ, "MODELYARD_CHECKPOINT": str(Path(ckpt).resolve()), "MODELYARD_RUNTIME": runtime,
           "BENTOML_DO_NOT_TRACK": "true",  # no usage reporting: this machine may have no network at all
           **settings_env(options or {})}
    target = f"{service_path(task)}:{service_module(task).SERVICE}"
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child from here on
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]
    return subprocess.Popen(dies_with_parent(command), env=env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=True)


STARTUP_FAILED = "Application startup failed"  # what BentoML logs when a service's __init__ raised; it keeps running


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    offset = log.stat().st_size if log is not None and log.is_file() else 0  # the log is appended to across runs
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.is_file() else []
            raise ServerFailed(f"the service exited with code {process.returncode}" +
                               (f": {tail[0]}" if tail else ""))
        failure = startup_failure(log, offset)
        if failure is not None:
            stop_server(process)
            raise ServerFailed(f"the service could not start: {failure}")
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
