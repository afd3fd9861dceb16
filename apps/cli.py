"""The `modelyard` command line.

`train TASK` and `serve TASK` are built from declarations: the engine's options (training.config.ENGINE_OPTIONS)
and the task recipe's OPTIONS for training, the service module's OPTIONS for serving, each tab's OPTIONS for `app`.
Adding a task adds its commands; nothing here names one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from apps import actions
from apps.actions import CommandError, fmt
from apps.commands import LazyGroup, build_command
from streaming.retention import KEEP_RECORDS
from training.options import Option
from training.tasks.specs import export_formats

SETTINGS = {"max_content_width": 120, "help_option_names": ["-h", "--help"]}
console = Console()
err = Console(stderr=True)


@click.group(context_settings=SETTINGS, no_args_is_help=True)
def app() -> None:
    """modelyard: train, evaluate, export and serve models."""


@app.group("data", no_args_is_help=True)
def data_app() -> None:
    """Data utilities."""


@app.group("stream", no_args_is_help=True)
def stream_app() -> None:
    """Kafka streaming: the embedded broker, the turbofan sensor replay and the monitor."""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise click.exceptions.Exit(code)


def _reported(action, *args: Any) -> Any:
    try:
        return action(*args)
    except CommandError as exc:
        fail(str(exc))


# --- train TASK ---------------------------------------------------------------------------------------------------

CONFIG_OPTION = Option("config", Path, None, "a JSON file of option values (e.g. what modelyard tune wrote to "
                                            "best.json); options given on the command line win")


def _with_config(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with those left at their defaults taken from --config FILE, when given."""
    path = values.pop("config", None)
    if path is None:
        return values
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        fail(f"{path}: not a readable JSON file of option values ({exc})")
    if not isinstance(loaded, dict):
        fail(f"{path}: expected a JSON object of option values")
    unknown = sorted(set(loaded) - set(values))
    if unknown:
        fail(f"{path}: no option {', '.join('--' + k.replace('_', '-') for k in unknown)} for this command")
    context = click.get_current_context()
    for name, value in loaded.items():
        if context.get_parameter_source(name) in (click.core.ParameterSource.DEFAULT, None):
            values[name] = value
    return values


def train_command(task: str) -> click.Command:
    from training.config import ENGINE_OPTIONS
    from training.tasks.specs import task_spec

    spec = task_spec(task)  # not the recipe: `train TASK --help` imports no torch
    engine_names = {option.name for option in ENGINE_OPTIONS}

    def run(**values: Any) -> None:
        values = _with_config(values)
        engine = {k: v for k, v in values.items() if k in engine_names}
        options = {k: v for k, v in values.items() if k not in engine_names}
        _reported(actions.train, task, engine, options)

    return build_command(task, f"Train {task}: {spec.summary} Writes a verified checkpoint (and, unless "
                               "--no-evaluate, its evaluation report) to OUT.",
                         [("Engine options", (*ENGINE_OPTIONS, CONFIG_OPTION)), (f"{task} options", spec.options)],
                         run)


# --- tune TASK ----------------------------------------------------------------------------------------------------

TUNE_OPTIONS = (
    Option("trials", int, 20, "training runs to try", minimum=1),
    Option("timeout", float, None, "stop starting trials after this many seconds", minimum=1),
)


def tune_command(task: str) -> click.Command:
    from training.config import ENGINE_OPTIONS
    from training.tasks.specs import task_spec

    spec = task_spec(task)
    monitor = spec.tune_monitor[0]
    engine_names = {option.name for option in ENGINE_OPTIONS}

    def run(trials: int, timeout: float | None, **values: Any) -> None:
        from training.tune import tune

        engine = {k: v for k, v in values.items() if k in engine_names}
        options = {k: v for k, v in values.items() if k not in engine_names}
        try:
            base = actions.train_config(task, engine, options)
            result = tune(task, base, trials, timeout, seed=base.seed)
        except (CommandError, ValueError, RuntimeError, OSError) as exc:
            fail(str(exc).strip().splitlines()[0])
        console.print(f"{result.trials} trials ({result.pruned} pruned) in {result.seconds:.0f} s; best "
                      f"{monitor} {result.best_value:.4f} with {json.dumps(result.best_options)}")
        for path in result.files:
            console.print(f"wrote {path}")
        console.print(f"train with it: modelyard train {task} --config {Path(base.out) / 'best.json'} --out DIR")

    return build_command(task, f"Search {task}'s hyperparameters with Optuna: {spec.summary} Each trial is a "
                               "training run under OUT/trials; the options below fix what the search does not vary.",
                         [("Tune options", TUNE_OPTIONS), ("Engine options", ENGINE_OPTIONS),
                          (f"{task} options", spec.options)], run)


def _task_group(name: str, help_text: str, names, build) -> click.Group:
    from training.tasks import summary

    return LazyGroup(name, names=names, build=build, summary=summary, help=help_text, no_args_is_help=True)


def _tunable_tasks() -> list[str]:
    from training.tasks.specs import task_specs

    return [spec.name for spec in task_specs() if spec.tunable]


# --- serve TASK ---------------------------------------------------------------------------------------------------

SERVE_OPTIONS = (
    Option("checkpoint", Path, None, "checkpoint directory (verified before serving)", required=True),
    Option("port", int, 3000, "HTTP port", minimum=1),
    Option("host", str, "127.0.0.1", "interface to bind"),
    Option("runtime", str, "onnx", "ONNX Runtime (needs `modelyard export`) or torch", choices=("onnx", "torch")),
)


def serve_command(task: str) -> click.Command:
    from serving.server import service_module

    service = service_module(task)

    def run(checkpoint: Path, port: int, host: str, runtime: str, **options: Any) -> None:
        serve(task, checkpoint, port, host, runtime, options)

    return build_command(task, f"Serve a {task} checkpoint over HTTP with BentoML: POST {service.ROUTE} "
                               "(/healthz /readyz /metrics, OpenAPI at /docs).",
                         [("Server options", SERVE_OPTIONS), (f"{task} service options", service.OPTIONS)], run)


def serve(task: str, checkpoint: Path, port: int, host: str, runtime: str, options: dict[str, Any]) -> None:
    import tempfile

    from apps.signals import interrupt_on_sigterm
    from serving.server import ServerFailed, service_module, start_server, stop_server, wait_ready
    from training.checkpoint import CheckpointError, verify_checkpoint
    from training.tasks.specs import task_spec

    try:
        manifest = verify_checkpoint(checkpoint)
        if manifest.task != task:
            raise ValueError(f"{checkpoint} holds a {manifest.task} model, not a {task} model")
        spec = task_spec(task)
        if runtime not in spec.runtimes:
            console.print(f"the {task} service runs on {spec.runtimes[0]} only")
            runtime = spec.runtimes[0]
        onnx = spec.onnx_file
        if runtime == "onnx" and onnx not in manifest.files:
            raise ValueError(f"{checkpoint / onnx}: missing; run `modelyard export {checkpoint}` first "
                             f"or use --runtime torch")
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    log = Path(tempfile.gettempdir()) / f"modelyard-serve-{task}-{port}.log"
    process = start_server(task, checkpoint, port, runtime, host, options, log=log)
    url = f"http://{host}:{port}"
    interrupt_on_sigterm()
    try:
        wait_ready(url, process, log=log)
        console.print(f"{task} API ready ({runtime}): POST {url}{service_module(task).ROUTE}   docs: {url}/docs   "
                      f"metrics: {url}/metrics")
        console.print(f"server log: {log}; Ctrl-C stops it")
        process.wait()
        fail(f"the service exited with code {process.returncode}; see {log}")
    except ServerFailed as exc:
        fail(f"{exc} (log: {log})")
    except KeyboardInterrupt:
        console.print("stopping the service")
    finally:
        stop_server(process)


# --- app ----------------------------------------------------------------------------------------------------------

APP_OPTIONS = (
    Option("port", int, 7860, "HTTP port", minimum=1),
    Option("host", str, "127.0.0.1", "interface to bind"),
    Option("runtime", str, "onnx", "runtime for in-process predictions", choices=("onnx", "torch")),
)


def app_command() -> click.Command:
    from apps.tabs import tab_modules

    def run(port: int, host: str, **values: Any) -> None:
        from apps.gradio_app import build_app
        from training.checkpoint import CheckpointError

        try:
            demo_app = build_app(values)
        except (CheckpointError, ValueError) as exc:
            fail(str(exc))
        console.print(f"app: http://{host}:{port}  (Ctrl-C stops it)")
        demo_app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)

    sections = [("App options", APP_OPTIONS), *((f"{tab.TITLE} tab", tab.OPTIONS) for tab in tab_modules())]
    return build_command("app", "Start the Gradio demo app with a tab for each model whose API (or checkpoint) is "
                                "given.", sections, run)


# --- evaluate, export, compare ------------------------------------------------------------------------------------

PATH = click.Path(path_type=Path)


EVALUATE_OPTIONS = (Option("data_dir", Path, None, "dataset folder (default: the one used for training)"),)


def evaluate_command() -> click.Command:
    """`evaluate CKPT`, with the options some task's evaluation declares (refused for a checkpoint of another)."""
    from training.tasks.specs import task_specs

    def run(ckpt: Path, data_dir: Path | None, **options: Any) -> None:
        _reported(actions.evaluate, ckpt, data_dir, {k: v for k, v in options.items() if v is not None})

    sections = [("Options", EVALUATE_OPTIONS), *((f"{spec.name} checkpoints", spec.evaluate_options)
                                                 for spec in task_specs() if spec.evaluate_options)]
    command = build_command("evaluate", "Evaluate a checkpoint on its task's test data: writes CKPT/report.json and "
                                        "plots, prints a summary.", sections, run)
    command.params.insert(0, click.Argument(["ckpt"], type=PATH))
    return command


@app.command()
@click.argument("ckpt", type=PATH)
@click.option("--format", "format_", type=click.Choice(export_formats()), default="onnx", show_default=True,
              help="onnx: what ONNX Runtime serves; hf: a Hugging Face folder with a model card (where the task's "
                   "model is a transformers one)")
@click.option("--weights", type=click.Choice(["int8", "fp32"]),
              help="where the ONNX exporter quantizes (a decoder): its matrices in int8 (default) or fp32")
@click.option("--out", type=PATH, help="a folder format's folder (default: inside CKPT, recorded in the manifest)")
def export(ckpt: Path, format_: str, weights: str | None, out: Path | None) -> None:
    """Export the checkpoint's model (CKPT/model.onnx, or the ONNX file its task names; or a folder in another
    format) and print how far the exported model's outputs are from the checkpoint's."""
    _reported(actions.export, ckpt, format_, weights, out)


@app.command()
@click.argument("task")
@click.option("--checkpoint", type=PATH, help="the checkpoint (default: the demo's, runs/demo/TASK)")
def bento(task: str, checkpoint: Path | None) -> None:
    """Put a checkpoint into BentoML's model store and build a Bento of TASK's service on it (`bentoml serve TAG`
    serves it from any folder; `bentoml containerize TAG` makes an image where a container builder runs)."""
    from apps.demo import DemoSettings

    _reported(actions.bento, task, checkpoint or DemoSettings.out / task)


@app.command()
@click.argument("checkpoints", type=PATH, nargs=-1, required=True)
@click.option("--plot", type=PATH, help="also write a PNG overlaying their validation curves (per epoch)")
def compare(checkpoints: tuple[Path, ...], plot: Path | None) -> None:
    """Print checkpoints side by side: quality metrics, parameters, training time and latency."""
    from safetensors import safe_open

    from training.checkpoint import WEIGHTS, CheckpointError, read_report, verify_checkpoint
    from training.tasks.specs import task_spec

    columns = []
    for ckpt in checkpoints:
        try:
            manifest = verify_checkpoint(ckpt)
        except CheckpointError as exc:
            fail(str(exc))
        report = read_report(ckpt, manifest)
        params = report.get("params")
        if params is None:  # the weights file also holds buffers (BatchNorm statistics): the report counts better
            with safe_open(str(ckpt / WEIGHTS), "pt") as weights:
                params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())  # noqa: SIM118
        t = manifest.training
        spec = task_spec(manifest.task)
        metrics = dict.fromkeys((spec.headline[0], *spec.compared))  # a report lacking one leaves its cell empty
        columns.append({
            "task": manifest.task, "model": str(t.get("base_model") or manifest.model.get("arch")),
            "backend / strategy": f"{t.get('backend')} / {t.get('strategy')}",
            "optimizer / lr": f"{t.get('optimizer') or 'default'} / {t.get('lr') or 'default'}",
            "epochs": t.get("epochs_run"),
            **{k: report[k] for k in metrics if k in report},
            "params": params, "train time (s)": t.get("train_seconds"), "latency (ms)": report.get("latency_ms"),
        })
    table = Table(title="checkpoints compared (metrics from each report.json)")
    table.add_column("")
    for ckpt in checkpoints:
        table.add_column(str(ckpt), justify="right", overflow="fold")
    keys = list(dict.fromkeys(k for column in columns for k in column))
    for key in keys:
        table.add_row(key, *[fmt(c.get(key)) if not isinstance(c.get(key), str) else c[key] for c in columns])
    console.print(table)
    if plot is not None:
        from training.reports.comparison_plots import plot_validation_curves

        try:
            console.print(f"plot: {plot_validation_curves(plot, list(checkpoints))}")
        except ValueError as exc:
            fail(str(exc))


@data_app.command("synth")
@click.argument("task")
@click.option("--out", type=PATH, required=True, help="folder to write the generated files into")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(task: str, out: Path, seed: int) -> None:
    """Write generated data in the task's real file format."""
    from training.tasks import get_task

    try:
        files = get_task(task).synthesize(out, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    for path in files:
        console.print(f"wrote {path}")


# --- streaming ----------------------------------------------------------------------------------------------------

@stream_app.command("broker")
@click.option("--port", type=int, default=9092, show_default=True, help="Kafka port on --host")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--data-dir", type=PATH, default=Path("runs/broker"), show_default=True,
              help="where the broker keeps its data")
@click.option("--keep-records", type=click.IntRange(min=1), default=KEEP_RECORDS, show_default=True,
              help="records kept per partition; older ones are deleted (bounds the broker's disk use)")
def stream_broker(port: int, host: str, data_dir: Path, keep_records: int) -> None:
    """Run the embedded Kafka-protocol broker (noida-db) until Ctrl-C or SIGTERM."""
    import time

    from apps.signals import interrupt_on_sigterm
    from streaming.broker import BrokerError, EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker(data_dir, port, host, keep_records)
    interrupt_on_sigterm()
    try:
        bootstrap = broker.start()
        ensure_topics(bootstrap)
        console.print(f"Kafka broker ready: bootstrap servers {bootstrap} (data: {data_dir}, the newest "
                      f"{keep_records:,} records per partition); Ctrl-C stops it")
        while broker.process.poll() is None:
            time.sleep(0.5)
        fail(f"the broker exited with code {broker.process.returncode}; see {data_dir / 'broker.log'}")
    except BrokerError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("stopping the broker")
    finally:
        broker.stop()


@stream_app.command("replay")
@click.option("--data-dir", type=PATH, required=True, help="C-MAPSS folder")
@click.option("--bootstrap-servers", default="127.0.0.1:9092", show_default=True, help="Kafka bootstrap servers")
@click.option("--subset", default="FD001", show_default=True, help="FD001..FD004")
@click.option("--split", default="test", show_default=True, help="train | test")
@click.option("--rate", type=float, default=100.0, show_default=True,
              help="messages per second (0: as fast as possible)")
@click.option("--engines", help="comma-separated engine ids (default: all)")
@click.option("--loop", is_flag=True, help="start over after the last cycle (engine ids + 1000 per pass)")
@click.option("--connect-timeout", type=float, default=15.0, show_default=True,
              help="seconds to wait for the broker")
def stream_replay(data_dir: Path, bootstrap_servers: str, subset: str, split: str, rate: float, engines: str | None,
                  loop: bool, connect_timeout: float) -> None:
    """Publish one JSON message per engine cycle to turbofan.sensors, keyed by engine id."""
    import signal
    import threading

    from kafka.errors import KafkaError

    from streaming.broker import BrokerError, ensure_topics, wait_for_broker
    from streaming.replay import load_replay, replay
    from training.data.errors import DataFormatError

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        ids = [int(e) for e in engines.split(",")] if engines else None
        frame = load_replay(data_dir, subset, split, ids)
        wait_for_broker(bootstrap_servers, timeout=connect_timeout)
        ensure_topics(bootstrap_servers)
        result = replay(bootstrap_servers, frame, rate, loop, stop=stop)
    except (DataFormatError, FileNotFoundError, ValueError, BrokerError, KafkaError) as exc:
        fail(str(exc))
    console.print(f"replayed {result.messages} messages in {result.seconds:.1f} s to {bootstrap_servers}")


@stream_app.command("monitor")
@click.option("--checkpoint", type=PATH, required=True, help="turbofan checkpoint (with model.onnx, or --runtime "
                                                              "torch)")
@click.option("--bootstrap-servers", default="127.0.0.1:9092", show_default=True, help="Kafka bootstrap servers")
@click.option("--group", default="turbofan-monitor", show_default=True, help="consumer group id")
@click.option("--instance-id", help="stable id of this monitor in its group (Kafka static membership): a restart "
                                    "takes its partitions back at once; give each monitor its own")
@click.option("--consecutive", type=click.IntRange(min=1), default=3, show_default=True,
              help="cycles in alarm before an alert fires")
@click.option("--hysteresis", type=float, help="margin past the threshold to resolve")
@click.option("--runtime", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True)
@click.option("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
@click.option("--log-every", type=float, default=10.0, show_default=True, help="seconds between status lines")
@click.option("--forget-after", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="forget an engine not heard from for this many seconds of stream (event) time")
def stream_monitor(checkpoint: Path, bootstrap_servers: str, group: str, instance_id: str | None, consecutive: int,
                   hysteresis: float | None, runtime: str, metrics_port: int | None, log_every: float,
                   forget_after: float) -> None:
    """Score turbofan.sensors with the checkpoint's detector; alerts to turbofan.alerts, bad messages to
    turbofan.dlq; offsets committed after the alerts are produced. Runs until Ctrl-C or SIGTERM."""
    import logging
    import signal

    from kafka.errors import KafkaError

    from streaming.broker import BrokerError, ensure_topics, wait_for_broker
    from streaming.monitor import MonitorSettings, TurbofanMonitor, serve_metrics
    from training.checkpoint import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the client logs every connection at INFO
    try:
        wait_for_broker(bootstrap_servers, timeout=15)
        ensure_topics(bootstrap_servers)
        monitor = TurbofanMonitor(MonitorSettings(bootstrap_servers, checkpoint, group, instance_id, runtime,
                                                  consecutive, hysteresis, log_every_s=log_every,
                                                  forget_after_s=forget_after))
        if metrics_port:
            serve_metrics(monitor, metrics_port)
    except (CheckpointError, BrokerError, KafkaError, ValueError) as exc:
        fail(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop())
    signal.signal(signal.SIGINT, lambda *_: monitor.stop())
    console.print(f"monitoring {bootstrap_servers} as group {group}: alarm when {monitor.rule.describe()}"
                  + (f"; metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""))
    monitor.run()
    console.print(f"monitor stopped: {monitor.summary()}")


# --- demo ---------------------------------------------------------------------------------------------------------

@app.command()
@click.option("--out", type=PATH, default=Path("runs/demo"), show_default=True,
              help="where the demo writes its checkpoints")
@click.option("--tasks", help="comma-separated tasks (default: every task)")
@click.option("--retrain", is_flag=True, help="train again even where a checkpoint made by the same code, data and "
                                              "settings exists")
@click.option("--epochs", type=click.IntRange(min=1), help="epochs for every training run (each task's time-boxed "
                                                           "demo recipe otherwise)")
@click.option("--model", "models", multiple=True, help="TASK=NAME_OR_PATH: another model for a task (e.g. "
                                                       "news=distilbert-base-uncased); repeatable")
@click.option("--set", "sets", multiple=True, help="TASK.OPTION=VALUE: an engine or task option for that task's runs "
                                                   "(e.g. image.width=16, news.time_limit=60); repeatable")
@click.option("--serve/--no-serve", "serve_models", default=True, show_default=True,
              help="then serve the APIs, the stream monitor and the app until Ctrl-C")
@click.option("--api-port", type=int, default=3000, show_default=True,
              help="first API port; each task's API takes the next one")
@click.option("--app-port", type=int, default=7860, show_default=True, help="Gradio app port")
@click.option("--kafka-port", type=int, default=9092, show_default=True, help="embedded Kafka broker port")
@click.option("--metrics-port", type=int, default=9108, show_default=True, help="monitor metrics port")
def demo(out: Path, tasks: str | None, retrain: bool, epochs: int | None, models: tuple[str, ...],
         sets: tuple[str, ...], serve_models: bool, api_port: int, app_port: int, kafka_port: int,
         metrics_port: int) -> None:
    """Train, evaluate and export every model (real data when available, generated otherwise; each time-boxed),
    reusing checkpoints made by the same code, data and settings; then serve them until Ctrl-C: Kafka broker,
    turbofan replay and monitor, one BentoML API per model, the Gradio app with a tab per model."""
    from apps.demo import DemoError, DemoSettings, run_demo

    overrides: dict[str, dict[str, str]] = {}
    for item in models:
        if "=" not in item:
            fail(f"--model {item}: expected TASK=NAME_OR_PATH")
        task, value = item.split("=", 1)
        overrides.setdefault(task, {})["model"] = value
    for item in sets:
        key, _, value = item.partition("=")
        if "." not in key or not _:
            fail(f"--set {item}: expected TASK.OPTION=VALUE")
        task, name = key.split(".", 1)
        overrides.setdefault(task, {})[name] = value
    try:
        run_demo(DemoSettings(out=out, tasks=tasks.split(",") if tasks else None, retrain=retrain, epochs=epochs,
                              overrides=overrides, serve=serve_models,
                              api_port=api_port, app_port=app_port, kafka_port=kafka_port,
                              metrics_port=metrics_port), console)
    except (DemoError, CommandError, ValueError, OSError) as exc:
        fail(str(exc))


def cli() -> click.Group:
    from serving.server import served_tasks
    from training.tasks import task_names

    root = app
    root.add_command(_task_group("train", "Train a task's model (modelyard train TASK --help: its options).",
                                 task_names, train_command))
    root.add_command(_task_group("serve", "Serve a task's checkpoint over HTTP (modelyard serve TASK --help).",
                                 served_tasks, serve_command))
    root.add_command(_task_group("tune", "Search a task's hyperparameters with Optuna (modelyard tune TASK --help).",
                                 _tunable_tasks, tune_command))
    root.add_command(app_command())
    root.add_command(evaluate_command())
    return root


def main() -> None:
    try:
        cli()(prog_name="modelyard")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
