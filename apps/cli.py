"""The `modelyard` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="modelyard: train, evaluate, export and serve models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Data utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")
stream_app = typer.Typer(help="Kafka streaming: the embedded broker and the turbofan sensor replay.",
                         no_args_is_help=True)
app.add_typer(stream_app, name="stream")
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def train(
    task: Annotated[str, typer.Argument(help="task name: turbofan | news")],
    out: Annotated[Path, typer.Option(help="checkpoint directory to write")],
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder (default: $MODELYARD_DATA/<task data>)")] = None,
    subset: Annotated[str, typer.Option(help="C-MAPSS subset FD001..FD004")] = "FD001",
    synthetic: Annotated[bool, typer.Option(help="train on generated data in the real file format")] = False,
    model: Annotated[str | None, typer.Option(help="turbofan: lstm, transformer, lstm_autoencoder; news: a Hugging "
                                                   "Face encoder id or local path (default all-MiniLM-L6-v2)")] = None,
    objective: Annotated[str | None, typer.Option(help="turbofan: rul (default) or reconstruction")] = None,
    alert_rul: Annotated[float, typer.Option(help="turbofan: alarm horizon in cycles (truth: true RUL <= it)")] = 30.0,
    members: Annotated[int | None, typer.Option(help="turbofan lstm: LSTMs averaged in one model (default 3)")] = None,
    window: Annotated[int | None, typer.Option(help="turbofan: cycles per model input window (default 30)")] = None,
    teacher: Annotated[Path | None, typer.Option(help="turbofan: a trained RUL checkpoint whose predictions this "
                                                      "model learns to copy (distillation, e.g. with --members 1)")]
    = None,
    train_file: Annotated[Path | None, typer.Option(help="news: training CSV (default DATA_DIR/train.csv)")] = None,
    eval_file: Annotated[Path | None, typer.Option(help="news: evaluation CSV (default DATA_DIR/test.csv)")] = None,
    train_rows: Annotated[int | None, typer.Option(help="news: when train and eval file are one file, this many "
                                                        "rows (stratified) train and the rest evaluate")] = None,
    max_length: Annotated[int | None, typer.Option(help="news: tokens per text (default 128)")] = None,
    layers: Annotated[int | None, typer.Option(help="news: keep the encoder's first N layers (default all)")] = None,
    lowercase: Annotated[bool, typer.Option(help="news: lowercase texts")] = False,
    remove_stopwords: Annotated[bool, typer.Option(help="news: drop English stopwords (scikit-learn list)")] = False,
    augment: Annotated[str | None, typer.Option(help="news: delete,swap or all (token deletion, adjacent swaps)")]
    = None,
    backend: Annotated[str, typer.Option(help="torch | colossalai | fairscale")] = "torch",
    strategy: Annotated[str | None, typer.Option(help="torch: ddp fsdp; colossalai: ddp zero1 zero2 gemini hybrid "
                                                      "fsdp; fairscale: oss pipe fsdp")] = None,
    tp: Annotated[int, typer.Option(help="tensor-parallel size (colossalai hybrid)")] = 1,
    pp: Annotated[int, typer.Option(help="pipeline-parallel size (colossalai hybrid)")] = 1,
    offload: Annotated[bool, typer.Option(help="keep optimizer state in CPU memory (colossalai zero2/gemini)")] = False,
    nproc: Annotated[int, typer.Option(help="processes on this machine")] = 1,
    nnodes: Annotated[int, typer.Option(help="machines taking part")] = 1,
    node_rank: Annotated[int | None, typer.Option(help="this machine's rank (static rendezvous)")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT every machine can reach")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | fp16")] = "fp32",
    grad_accum: Annotated[int, typer.Option(help="micro-batches per optimizer step")] = 1,
    epochs: Annotated[int | None, typer.Option(help="epochs (task default otherwise)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many optimizer steps")] = None,
    batch_size: Annotated[int | None, typer.Option(help="micro-batch per process")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    checkpointing: Annotated[bool, typer.Option(help="activation checkpointing on each model block")] = False,
    early_stop_patience: Annotated[int | None, typer.Option(help="epochs without validation gain")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT/state")] = False,
    evaluate_after: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="write the report")] = True,
) -> None:
    """Train TASK and write a verified checkpoint (and, by default, its evaluation report) to OUT."""
    from training.config import TrainConfig
    from training.engine.backends import DEFAULT_STRATEGY, StrategyUnavailable
    from training.launch import TrainingFailed, run_training

    if precision not in ("fp32", "bf16", "fp16"):
        fail(f"--precision must be fp32, bf16 or fp16, not {precision!r}")
    for name, value in (("--nproc", nproc), ("--nnodes", nnodes), ("--grad-accum", grad_accum), ("--tp", tp),
                        ("--pp", pp), ("--members", 1 if members is None else members),
                        ("--window", 1 if window is None else window), ("--layers", 1 if layers is None else layers)):
        if value < 1:
            fail(f"{name} must be at least 1")
    cfg = TrainConfig(task=task, out=str(out), data_dir=str(data_dir) if data_dir else None, subset=subset,
                      synthetic=synthetic, model=model, objective=objective, backend=backend,
                      strategy=strategy or DEFAULT_STRATEGY.get(backend, "ddp"), tp=tp, pp=pp, offload=offload,
                      nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, device=device,
                      precision=precision, grad_accum=grad_accum, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, lr=lr, checkpointing=checkpointing,
                      early_stop_patience=early_stop_patience, seed=seed, resume=resume, evaluate=evaluate_after,
                      task_options={"alert_rul": alert_rul, "members": members, "window": window,
                                    "teacher": _path(teacher),
                                    "train_file": _path(train_file), "eval_file": _path(eval_file),
                                    "train_rows": train_rows, "max_length": max_length, "layers": layers,
                                    "lowercase": lowercase, "remove_stopwords": remove_stopwords, "augment": augment})
    if synthetic:
        console.print(f"data: generated {task} data (synthetic, real file format)")
    try:
        run_training(cfg)
    except (StrategyUnavailable, TrainingFailed, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if node_rank:  # another machine's launcher: node 0 owns the checkpoint and its report
        console.print(f"node {node_rank}: training finished; node 0 wrote {out}")
        return
    console.print(f"checkpoint: {out}")
    _print_train_summary(out)
    if evaluate_after:
        evaluate(out, None)


@app.command()
def evaluate(
    ckpt: Annotated[Path, typer.Argument(help="checkpoint directory")],
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder (default: the one used for training)")] = None,
) -> None:
    """Evaluate a checkpoint on its task's test data: writes CKPT/report.json and plots, prints a summary."""
    from training.checkpoint import CheckpointError, read_manifest
    from training.data.errors import DataFormatError
    from training.tasks import get_task

    try:
        task = get_task(read_manifest(ckpt).task)
        with console.status("evaluating"):
            report = task.evaluate(ckpt, data_dir)
    except (CheckpointError, DataFormatError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    table = Table(title=f"{report['task']} evaluation ({report.get('subset', '')})")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline", justify="right")
    baseline = report.get("baseline", {})
    for key, value in report.items():
        if isinstance(value, float) or value is None and key in ("rmse", "nasa_score"):
            table.add_row(key, _fmt(value), _fmt(baseline.get(key)))
    console.print(table)
    console.print(f"report: {ckpt / 'report.json'}")
    for plot in report.get("plots", []):
        console.print(f"plot:   {ckpt / plot}")


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="checkpoint directory")],
    format: Annotated[str, typer.Option(help="onnx")] = "onnx",
) -> None:
    """Export the checkpoint's model (CKPT/model.onnx) and print the ONNX-vs-torch max abs difference."""
    from training.checkpoint import CheckpointError
    from training.export import export_onnx

    if format != "onnx":
        fail(f"unsupported export format {format!r}; only onnx")
    try:
        diff = export_onnx(ckpt)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {ckpt / 'model.onnx'}")
    console.print(f"max abs difference ONNX Runtime vs torch: {diff:.3e}")


@app.command()
def compare(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint directories, each evaluated")],
) -> None:
    """Print checkpoints side by side: quality metrics, parameters, training time and latency."""
    from safetensors import safe_open

    from training.checkpoint import WEIGHTS, CheckpointError, verify_checkpoint

    columns = []
    for ckpt in checkpoints:
        try:
            manifest = verify_checkpoint(ckpt)
        except CheckpointError as exc:
            fail(str(exc))
        report_path = ckpt / "report.json"
        report = json.loads(report_path.read_text()) if "report.json" in manifest.files else {}
        with safe_open(str(ckpt / WEIGHTS), "pt") as weights:
            params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())  # noqa: SIM118
        t = manifest.training
        columns.append({
            "task": manifest.task, "model": str(t.get("base_model") or manifest.model.get("arch")),
            "backend / strategy": f"{t.get('backend')} / {t.get('strategy')}",
            **{k: report.get(k) for k in _COMPARED_METRICS if k in report},
            "params": params, "train time (s)": t.get("train_seconds"), "latency (ms)": report.get("latency_ms"),
        })
    table = Table(title="checkpoints compared (metrics from each report.json)")
    table.add_column("")
    for ckpt in checkpoints:
        table.add_column(str(ckpt), justify="right", overflow="fold")
    keys = list(dict.fromkeys(k for column in columns for k in column))
    for key in keys:
        table.add_row(key, *[_fmt(c.get(key)) if not isinstance(c.get(key), str) else c[key] for c in columns])
    console.print(table)


_COMPARED_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "rmse", "nasa_score", "alert_f1")


@app.command()
def serve(
    task: Annotated[str, typer.Argument(help="news | turbofan")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (verified before serving)")],
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1")] = 3000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    runtime: Annotated[str, typer.Option(help="onnx (ONNX Runtime) | torch")] = "onnx",
    max_texts: Annotated[int, typer.Option(help="news: most texts in one request")] = 64,
    max_chars: Annotated[int, typer.Option(help="news: most characters in one text")] = 10_000,
) -> None:
    """Serve a checkpoint over HTTP with BentoML (adaptive batching, /healthz /readyz /metrics, OpenAPI at /docs)."""
    import tempfile

    from apps.signals import interrupt_on_sigterm
    from serving.predictor import ONNX_FILE, RUNTIMES
    from serving.server import ServerFailed, service_for, start_server, stop_server, wait_ready
    from training.checkpoint import CheckpointError, verify_checkpoint

    try:
        route = service_for(task)[1]
        if runtime not in RUNTIMES:
            raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        manifest = verify_checkpoint(checkpoint)
        if manifest.task != task:
            raise ValueError(f"{checkpoint} holds a {manifest.task} model, not a {task} model")
        if runtime == "onnx" and ONNX_FILE not in manifest.files:
            raise ValueError(f"{checkpoint / ONNX_FILE}: missing; run `modelyard export {checkpoint}` first "
                             f"or use --runtime torch")
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    log = Path(tempfile.gettempdir()) / f"modelyard-serve-{task}-{port}.log"
    process = start_server(task, checkpoint, port, runtime, host, max_texts, max_chars, log=log)
    url = f"http://{host}:{port}"
    interrupt_on_sigterm()
    try:
        wait_ready(url, process, log=log)
        console.print(f"{task} API ready ({runtime}): POST {url}{route}   docs: {url}/docs   metrics: {url}/metrics")
        console.print(f"server log: {log}; Ctrl-C stops it")
        process.wait()
        fail(f"the service exited with code {process.returncode}; see {log}")
    except ServerFailed as exc:
        fail(f"{exc} (log: {log})")
    except KeyboardInterrupt:
        console.print("stopping the service")
    finally:
        stop_server(process)


@app.command("app")
def app_command(
    news_checkpoint: Annotated[Path | None, typer.Option(help="news checkpoint for in-process predictions")] = None,
    api_url: Annotated[str | None, typer.Option(help="news API base URL (from `modelyard serve news`)")] = None,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1")] = 7860,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    runtime: Annotated[str, typer.Option(help="onnx | torch (in-process predictions)")] = "onnx",
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka for the Turbofan monitor tab")] = None,
    monitor_metrics: Annotated[str | None, typer.Option(help="the monitor's metrics URL (.../metrics)")] = None,
) -> None:
    """Start the Gradio demo app: a News tab (its API with --api-url, else the checkpoint in-process) and a live
    Turbofan monitor tab (with --bootstrap-servers and --monitor-metrics)."""
    from apps.gradio_app import build_app
    from training.checkpoint import CheckpointError

    try:
        demo_app = build_app(news_checkpoint, api_url, runtime, bootstrap_servers, monitor_metrics)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    console.print(f"app: http://{host}:{port}  (Ctrl-C stops it)")
    demo_app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)


@data_app.command("synth")
def data_synth(
    task: Annotated[str, typer.Argument(help="task name: turbofan | news")],
    out: Annotated[Path, typer.Option(help="folder to write the generated files into")],
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write generated data in the task's real file format."""
    from training.tasks import get_task

    try:
        files = get_task(task).synthesize(out, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    for path in files:
        console.print(f"wrote {path}")


@stream_app.command("broker")
def stream_broker(
    port: Annotated[int, typer.Option(help="Kafka port on --host")] = 9092,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    data_dir: Annotated[Path, typer.Option(help="where the broker keeps its data")] = Path("runs/broker"),
) -> None:
    """Run the embedded Kafka-protocol broker (noida-db) until Ctrl-C or SIGTERM."""
    import time

    from apps.signals import interrupt_on_sigterm
    from streaming.broker import BrokerError, EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker(data_dir, port, host)
    interrupt_on_sigterm()
    try:
        bootstrap = broker.start()
        ensure_topics(bootstrap)
        console.print(f"Kafka broker ready: bootstrap servers {bootstrap} (data: {data_dir}); Ctrl-C stops it")
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
def stream_replay(
    data_dir: Annotated[Path, typer.Option(help="C-MAPSS folder")],
    bootstrap_servers: Annotated[str, typer.Option(help="Kafka bootstrap servers")] = "127.0.0.1:9092",
    subset: Annotated[str, typer.Option(help="FD001..FD004")] = "FD001",
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    rate: Annotated[float, typer.Option(help="messages per second (0: as fast as possible)")] = 100.0,
    engines: Annotated[str | None, typer.Option(help="comma-separated engine ids (default: all)")] = None,
    loop: Annotated[bool, typer.Option(help="start over after the last cycle (engine ids + 1000 per pass)")] = False,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the broker")] = 15.0,
) -> None:
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
def stream_monitor(
    checkpoint: Annotated[Path, typer.Option(help="turbofan checkpoint (with model.onnx, or --runtime torch)")],
    bootstrap_servers: Annotated[str, typer.Option(help="Kafka bootstrap servers")] = "127.0.0.1:9092",
    group: Annotated[str, typer.Option(help="consumer group id")] = "turbofan-monitor",
    instance_id: Annotated[str | None, typer.Option(help="stable id of this monitor in its group (Kafka static "
                                                         "membership): a restart takes its partitions back at once; "
                                                         "give each monitor its own")] = None,
    consecutive: Annotated[int, typer.Option(help="cycles in alarm before an alert fires")] = 3,
    hysteresis: Annotated[float | None, typer.Option(help="margin past the threshold to resolve")] = None,
    runtime: Annotated[str, typer.Option(help="onnx | torch")] = "onnx",
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus /metrics on this port")] = None,
    log_every: Annotated[float, typer.Option(help="seconds between status lines")] = 10.0,
) -> None:
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
        if consecutive < 1:
            raise ValueError("--consecutive must be at least 1")
        wait_for_broker(bootstrap_servers, timeout=15)
        ensure_topics(bootstrap_servers)
        monitor = TurbofanMonitor(MonitorSettings(bootstrap_servers, checkpoint, group, instance_id, runtime,
                                                  consecutive, hysteresis, log_every_s=log_every))
        if metrics_port:
            serve_metrics(monitor, metrics_port)
    except (CheckpointError, BrokerError, KafkaError, ValueError) as exc:
        fail(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop())
    signal.signal(signal.SIGINT, lambda *_: monitor.stop())
    rule = monitor.rule
    console.print(f"monitoring {bootstrap_servers} as group {group}: alarm when score "
                  f"{'>=' if rule.alarm_when_high else '<='} {rule.threshold:.3f} for {rule.consecutive} cycles"
                  + (f"; metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""))
    monitor.run()
    console.print(f"monitor stopped: {monitor.summary()}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the demo writes its checkpoints")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="turbofan training epochs (recipe default otherwise)")] = None,
    news_epochs: Annotated[int, typer.Option(help="news fine-tuning epochs")] = 1,
    news_model: Annotated[str | None, typer.Option(help="news encoder (default all-MiniLM-L6-v2)")] = None,
    serve_models: Annotated[bool, typer.Option("--serve/--no-serve", help="then serve the API and the app until "
                                                                         "Ctrl-C")] = True,
    api_port: Annotated[int, typer.Option(help="news API port (the turbofan API takes the next one)")] = 3000,
    app_port: Annotated[int, typer.Option(help="Gradio app port")] = 7860,
    kafka_port: Annotated[int, typer.Option(help="embedded Kafka broker port")] = 9092,
    metrics_port: Annotated[int, typer.Option(help="monitor metrics port")] = 9108,
) -> None:
    """Train, evaluate and export the turbofan and news models (real data when available, generated otherwise),
    then run them until Ctrl-C: Kafka broker, turbofan replay and monitor, both BentoML APIs, the Gradio app."""
    from apps.demo import news_data_args, ports_in_use, real_data

    ports = {"news": api_port, "turbofan": api_port + 1, "app": app_port, "kafka": kafka_port,
             "metrics": metrics_port}
    if serve_models and (taken := ports_in_use(ports)):
        fail(f"port {', '.join(taken)} already in use on 127.0.0.1; choose other ports or --no-serve")
    root = real_data("cmapss", "train_FD001.txt*")
    console.rule("modelyard demo 1/3: turbofan remaining-useful-life model (an ensemble of LSTMs)")
    console.print(f"data: real NASA C-MAPSS FD001 from {root}" if root else
                  "data: generated C-MAPSS-format data (set MODELYARD_DATA to a folder with cmapss/ for real data)")
    train(task="turbofan", out=out / "turbofan",
          **{**_train_defaults(), "data_dir": root, "synthetic": root is None, "epochs": epochs})
    export(out / "turbofan")

    console.rule("modelyard demo 2/3: one LSTM distilled from the ensemble, for the stream monitor")
    from training.checkpoint import read_manifest

    train(task="turbofan", out=out / "turbofan-monitor",
          **{**_train_defaults(), "data_dir": Path(read_manifest(out / "turbofan").training["data_dir"]),
             "epochs": epochs, "teacher": out / "turbofan", "members": 1})
    export(out / "turbofan-monitor")

    console.rule("modelyard demo 3/3: news topic classifier")
    data_args, note = news_data_args()
    console.print(note)
    train(task="news", out=out / "news", **{**_train_defaults(), **data_args, "epochs": news_epochs,
                                            "model": news_model})
    export(out / "news")
    if serve_models:
        from apps.demo import serve_until_interrupted

        try:
            serve_until_interrupted(out, ports, console)
        except OSError as exc:  # a port taken between the check above and now
            fail(f"could not start the demo services: {exc}")


def _path(path: Path | None) -> str | None:
    return str(path.resolve()) if path else None


def _train_defaults() -> dict:
    """train()'s defaults, so demo() can call it as a function rather than through typer."""
    import inspect

    skip = {"task", "out"}
    return {name: p.default for name, p in inspect.signature(train).parameters.items() if name not in skip}


def _print_train_summary(out: Path) -> None:
    from training.checkpoint import read_manifest

    manifest = read_manifest(out)
    t = manifest.training
    table = Table(title="training summary")
    table.add_column("item")
    table.add_column("value", justify="right")
    rows = [("backend / strategy", f"{t['backend']} / {t['strategy']}"), ("processes", str(t["nproc"] * t["nnodes"])),
            ("precision", t["precision"]), ("epochs run", str(t["epochs_run"])), ("optimizer steps", str(t["steps"])),
            ("train time (s)", f"{t['train_seconds']:.1f}"), ("samples/s", f"{t['samples_per_second']:.0f}"),
            ("stopped early", str(t["stopped_early"]))]
    rows += [(key, _fmt(value)) for key, value in manifest.metrics.items()]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else json.dumps(value)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
