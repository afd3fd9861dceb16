"""`modelyard demo`: train (or reuse), evaluate and export every task's demo runs, then serve them all until Ctrl-C.

Each task's spec says what its demo trains (`demo_runs()`, time-boxed); a checkpoint is reused when it verifies and its
manifest's fingerprint (code, data, settings) is the one this run would make. Serving: one BentoML API per task, the
live part a task's spec names for a run marked live (turbofan's: the embedded Kafka broker, a looping replay of the
test engines and the stream monitor), and the Gradio app.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from apps import actions
from training.export import onnx_file
from training.processes import release_freed_memory


class DemoError(RuntimeError):
    pass


@dataclass
class DemoSettings:
    out: Path = Path("runs/demo")
    tasks: list[str] | None = None  # None: every task
    retrain: bool = False
    epochs: int | None = None  # for every run, instead of the recipes' time boxes
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> {option: value} (--set, --model)
    serve: bool = True
    api_port: int = 3000
    app_port: int = 7860
    kafka_port: int = 9092
    metrics_port: int = 9108
    replay_rate: float = 200.0


@dataclass
class DemoModel:
    task: str
    name: str
    ckpt: Path
    reused: bool
    serve: bool
    live: str  # what it feeds in its task's live part, if anything


def run_demo(settings: DemoSettings, console: Console) -> None:
    from training.tasks import task_names

    tasks = settings.tasks or task_names()
    unknown = sorted(set(tasks) - set(task_names())) + sorted(set(settings.overrides) - set(task_names()))
    if unknown:
        raise DemoError(f"unknown task {', '.join(unknown)}; tasks: {', '.join(task_names())}")
    ports = demo_ports(settings, tasks)
    if settings.serve and (taken := ports_in_use(ports)):
        raise DemoError(f"port {', '.join(taken)} already in use on 127.0.0.1; choose other ports or --no-serve")
    models = train_all(settings, tasks, console)
    if settings.serve:
        serve_until_interrupted(settings, models, ports, console)
    else:
        console.print(summary_table(models, {}))


# --- training -----------------------------------------------------------------------------------------------------

def train_all(settings: DemoSettings, tasks: list[str], console: Console) -> list[DemoModel]:
    from training.tasks.specs import task_spec

    runs = [(task, run) for task in tasks for run in task_spec(task).demo_runs()]
    models: list[DemoModel] = []
    retrained: set[str] = set()
    for step, (task, run) in enumerate(runs, start=1):
        console.rule(f"modelyard demo {step}/{len(runs)}: {task}: {run.title}")
        if run.data_note:
            console.print(run.data_note)
        ckpt = settings.out / run.name
        depends = {value[1:] for value in run.options.values() if isinstance(value, str) and value.startswith("@")}
        options = {k: settings.out / v[1:] if isinstance(v, str) and v.startswith("@") else v
                   for k, v in run.options.items()}
        engine = {**run.engine, "out": ckpt}
        if settings.epochs is not None:
            engine["epochs"] = settings.epochs
        for name, value in settings.overrides.get(task, {}).items():
            target, option = option_named(task, name)
            (engine if target == "engine" else options)[name] = parse_value(option, value)
        reason = "--retrain" if settings.retrain else stale_reason(task, engine, options, depends & retrained)
        if reason is None:
            console.print(f"reusing {ckpt}: made by this code from the same data and settings "
                          "(--retrain trains again)")
        else:
            console.print(f"training: {reason}")
            actions.train(task, engine, options)
            if onnx_file(task):
                actions.export(ckpt)
            retrained.add(run.name)
            release_freed_memory()  # trained in this process, which then serves for days: keep only what it uses
        models.append(DemoModel(task, run.name, ckpt, reason is None, run.serve, run.live))
    return models


def option_named(task: str, name: str):
    """('engine' | 'task', the Option) for an option name of the engine or of `task`'s recipe."""
    from training.config import ENGINE_OPTIONS
    from training.tasks.specs import task_spec

    for target, options in (("engine", ENGINE_OPTIONS), ("task", task_spec(task).options)):
        for option in options:
            if option.name == name.replace("-", "_"):
                return target, option
    raise DemoError(f"--set {task}.{name}: neither an engine option nor one of {task}'s")


def parse_value(option, text: str):
    """A --set value as its option's type."""
    if option.type is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise DemoError(f"--set ...{option.name}={text}: expected true or false")
        return text.lower() in ("1", "true", "yes")
    try:
        return option.type(text)
    except ValueError:
        raise DemoError(f"--set ...{option.name}={text}: expected {option.type.__name__}") from None


def stale_reason(task: str, engine: dict[str, Any], options: dict[str, Any], retrained_deps: set[str]) -> str | None:
    """Why the checkpoint in engine["out"] cannot be reused, or None when it can."""
    from training.checkpoint import CheckpointError, verify_checkpoint
    from training.launch import planned

    ckpt = Path(engine["out"])
    if retrained_deps:
        return f"{', '.join(sorted(retrained_deps))} was trained again"
    try:
        manifest = verify_checkpoint(ckpt)
    except CheckpointError as exc:
        return "no checkpoint yet" if not (ckpt / "manifest.json").exists() else str(exc)
    missing = {"report.json", *([onnx_file(task)] if onnx_file(task) else [])} - set(manifest.files)
    if missing:
        return f"{ckpt} has no {' or '.join(sorted(missing))}"
    expected = planned(actions.train_config(task, engine, options)).fingerprint
    recorded = manifest.training.get("fingerprint") or {}
    changed = [part for part in ("code", "data", "settings") if recorded.get(part) != expected[part]]
    return f"the {' and '.join(changed)} changed since {ckpt} was made" if changed else None


def headline(model: DemoModel) -> tuple[str, Any]:
    from training.checkpoint import read_manifest
    from training.tasks.specs import task_spec

    key, label = task_spec(model.task).headline
    return label, read_manifest(model.ckpt).metrics.get(key)


def summary_table(models: list[DemoModel], urls: dict[str, str]) -> Table:
    table = Table(title="modelyard demo: models")
    for column in ("task", "checkpoint", "headline metric", "value", "API"):
        table.add_column(column, justify="right" if column == "value" else "left", overflow="fold")
    for model in models:
        label, value = headline(model)
        api = urls.get(model.task, "-") if model.serve else model.live or "-"
        table.add_row(model.task, f"{model.ckpt}{' (reused)' if model.reused else ''}", label, actions.fmt(value),
                      api)
    return table


# --- serving ------------------------------------------------------------------------------------------------------

PORT_OPTIONS = {"app": "--app-port", "kafka": "--kafka-port", "metrics": "--metrics-port"}


def demo_ports(settings: DemoSettings, tasks: list[str]) -> dict[str, int]:
    """Each task with an HTTP service gets the next port from --api-port; the live parts' ports (Kafka and metrics)
    only come with a task whose spec has one."""
    from serving.server import served_tasks
    from training.tasks.specs import task_spec

    served = served_tasks()
    ports = {task: settings.api_port + i for i, task in enumerate(t for t in tasks if t in served)}
    ports["app"] = settings.app_port
    if any(task_spec(task).live for task in tasks):
        ports.update(kafka=settings.kafka_port, metrics=settings.metrics_port)
    return ports


def ports_in_use(ports: dict[str, int]) -> list[str]:
    """The demo's ports that something on 127.0.0.1 already holds, checked before minutes of training rather than
    after; each named by its option."""
    import socket

    taken = []
    for name, port in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"{port} ({PORT_OPTIONS.get(name, f'the {name} API, from --api-port')})")
    return taken


def serve_until_interrupted(settings: DemoSettings, models: list[DemoModel], ports: dict[str, int],
                            console: Console) -> None:
    """Everything the trained models feed, until Ctrl-C or SIGTERM: one BentoML API per task, the live parts of the
    runs marked live, and the Gradio app."""
    import signal

    from apps.gradio_app import build_app
    from serving.server import service_module, start_server, stop_server, wait_ready
    from training.tasks.specs import load_named, task_spec

    # Ctrl-C and SIGTERM only set an event: raised as KeyboardInterrupt they could land inside a library call during
    # start-up (Gradio's launch, a server's readiness poll) and be swallowed there, leaving the demo running (seen
    # once in CI: the test's SIGINT came while the services were still starting). Start-up checks it between steps.
    stop = threading.Event()  # also stops the replay thread
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def started(step: Any) -> Any:
        if stop.is_set():
            raise KeyboardInterrupt
        return step

    logs = Path(tempfile.gettempdir())
    served = {model.task: model.ckpt for model in models if model.serve and model.task in ports}
    servers: dict[str, Any] = {}
    app, lives = None, []
    urls = {task: f"http://127.0.0.1:{ports[task]}" for task in served}
    # Each tab reads its task's API, and its checkpoint for what the API does not serve (examples, report plots).
    tab_values: dict[str, Any] = {f"{task}_api": url for task, url in urls.items()}
    tab_values.update({f"{task}_checkpoint": ckpt for task, ckpt in served.items()})
    try:
        # Every API starts at once: model loading overlaps, and a second demo is serving within seconds of the
        # slowest service's start-up rather than the sum of all of them.
        for task, ckpt in served.items():
            log = logs / f"modelyard-demo-{task}-{ports[task]}.log"
            servers[task] = (start_server(task, ckpt, ports[task], log=log), log)
        for model in (m for m in models if m.live):
            live = load_named(task_spec(model.task).live)(model.ckpt, settings.out / f"{model.name}-live", ports,
                                                           settings.replay_rate, stop)
            lives.append(live)
            tab_values.update(started(live.start()))
        for task, (process, log) in servers.items():
            started(wait_ready(urls[task], process, log=log))
        app = started(build_app(tab_values))
        started(app.launch(server_name="127.0.0.1", server_port=ports["app"], prevent_thread_lock=True, quiet=True))
        console.rule("modelyard demo is running")
        console.print(summary_table(models, {t: f"POST {urls[t]}{service_module(t).ROUTE}" for t in urls}))
        for live in lives:
            console.print(live.describe())
        console.print(f"OpenAPI documents: {', '.join(f'{url}/docs' for url in urls.values())}")
        console.print(f"demo app (Gradio):        http://127.0.0.1:{ports['app']}")
        console.print(f"service logs in {logs}.  Ctrl-C stops everything.")
        while not stop.wait(0.5):
            if any(process.poll() is not None for process, _ in servers.values()) or any(
                    live.failed() for live in lives):
                console.print("[red]a demo service exited; stopping the rest[/]")
                break
        else:
            console.print("stopping the demo")
    except KeyboardInterrupt:
        console.print("stopping the demo")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C during shutdown still works
        stop.set()
        for live in lives:
            live.close()
        if app is not None:
            app.close()
        for process, _ in servers.values():
            stop_server(process)
