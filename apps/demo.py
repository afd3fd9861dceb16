"""What `modelyard demo` needs besides training: where real data is, and serving the results until Ctrl-C."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

DEMO_NEWS_TRAIN_ROWS = 6000  # of AG News test.csv's 7,600 (the only real split here); the other 1,600 evaluate


def real_data(subdir: str, pattern: str) -> Path | None:
    root = os.environ.get("MODELYARD_DATA")
    folder = Path(root) / subdir if root else None
    return folder if folder and any(folder.glob(pattern)) else None


def news_data_args() -> tuple[dict[str, Any], str]:
    """Real AG News test.csv split 6,000/1,600 when available; generated AG News-format data otherwise."""
    folder = real_data("ag_news", "test.csv*")
    if folder is None:
        return {"synthetic": True}, "data: generated AG News-format data (set MODELYARD_DATA for real AG News)"
    test = next(folder.glob("test.csv*"))
    return ({"train_file": test, "eval_file": test, "train_rows": DEMO_NEWS_TRAIN_ROWS},
            f"data: real AG News {test}: {DEMO_NEWS_TRAIN_ROWS} stratified rows train, the rest evaluate")


PORT_OPTIONS = {"news": "--api-port", "turbofan": "--api-port + 1", "app": "--app-port", "kafka": "--kafka-port",
                "metrics": "--metrics-port"}


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
                taken.append(f"{port} ({PORT_OPTIONS[name]})")
    return taken


def serve_until_interrupted(out: Path, ports: dict[str, int], console: Console, replay_rate: float = 200.0) -> None:
    """Everything the trained models feed, until Ctrl-C or SIGTERM: the embedded Kafka broker, a replay of the
    turbofan test engines (looping), the monitor raising alerts, the news and turbofan BentoML APIs, and the Gradio
    app with its News and Turbofan monitor tabs."""
    import signal
    import threading

    from apps.gradio_app import build_app
    from serving.server import start_server, stop_server, wait_ready
    from streaming.broker import EmbeddedBroker, ensure_topics
    from streaming.monitor import MonitorSettings, TurbofanMonitor, serve_metrics
    from streaming.replay import load_replay, replay
    from training.checkpoint import read_manifest

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
    servers, app, threads = [], None, []
    import shutil

    shutil.rmtree(out / "broker", ignore_errors=True)  # a fresh stream: replayed engines start again at cycle 1
    broker = EmbeddedBroker(out / "broker", ports["kafka"])
    monitor = None
    try:
        bootstrap = broker.start()
        ensure_topics(bootstrap)
        training = read_manifest(out / "turbofan").training
        fleet = load_replay(Path(training["data_dir"]), training["subset"], "test")
        threads.append(threading.Thread(target=replay, args=(bootstrap, fleet, replay_rate, True),
                                        kwargs={"stop": stop, "progress": False}, daemon=True))
        # The monitor scores every message: it runs the distilled single LSTM, a third of the ensemble's cost.
        monitor = TurbofanMonitor(MonitorSettings(bootstrap, out / "turbofan-monitor", group="demo-monitor",
                                                  instance_id="demo-monitor-1"))
        serve_metrics(monitor, ports["metrics"])
        threads.append(threading.Thread(target=monitor.run, daemon=True))
        for thread in threads:
            thread.start()
        urls = {}
        for task in ("news", "turbofan"):
            log = logs / f"modelyard-demo-{task}-{ports[task]}.log"
            servers.append(started(start_server(task, out / task, ports[task], log=log)))
            urls[task] = f"http://127.0.0.1:{ports[task]}"
            started(wait_ready(urls[task], servers[-1], log=log))
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        app = started(build_app(news_api=urls["news"], bootstrap_servers=bootstrap, monitor_metrics=metrics))
        started(app.launch(server_name="127.0.0.1", server_port=ports["app"], prevent_thread_lock=True, quiet=True))
        console.rule("modelyard demo is running")
        console.print(f"Kafka broker (embedded):  {bootstrap}  topics turbofan.sensors / .alerts / .dlq")
        console.print(f"replay: {training['subset']} test engines at {replay_rate:.0f} messages/s, looping")
        console.print(f"monitor ({out / 'turbofan-monitor'}) metrics: {metrics}")
        console.print(f"news API (BentoML):       POST {urls['news']}/classify   OpenAPI: {urls['news']}/docs")
        console.print(f"turbofan API (BentoML):   POST {urls['turbofan']}/score   OpenAPI: {urls['turbofan']}/docs")
        console.print(f"demo app (Gradio):        http://127.0.0.1:{ports['app']}")
        console.print(f"service logs in {logs}.  Ctrl-C stops everything.")
        while not stop.wait(0.5):
            if any(server.poll() is not None for server in servers) or broker.process.poll() is not None:
                console.print("[red]a demo service exited; stopping the rest[/]")
                break
        else:
            console.print("stopping the demo")
    except KeyboardInterrupt:
        console.print("stopping the demo")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C during shutdown still works
        stop.set()
        if monitor is not None:
            monitor.stop()
        for thread in threads:
            thread.join(15)
        if app is not None:
            app.close()
        for server in servers:
            stop_server(server)
        broker.stop()
