"""What `modelyard demo` needs besides training: where real data is, and serving the results until Ctrl-C."""

from __future__ import annotations

import os
import signal
import tempfile
import time
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


def serve_until_interrupted(news_ckpt: Path, api_port: int, app_port: int, console: Console) -> None:
    """The news model behind BentoML, and the Gradio app calling that API; both stop on Ctrl-C or SIGTERM."""
    from apps.gradio_app import build_app
    from serving.server import start_server, stop_server, wait_ready

    log = Path(tempfile.gettempdir()) / f"modelyard-demo-news-{api_port}.log"
    api_url = f"http://127.0.0.1:{api_port}"
    server = start_server("news", news_ckpt, api_port, log=log)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    app = None
    try:
        wait_ready(api_url, server, log=log)
        app = build_app(news_api=api_url)
        app.launch(server_name="127.0.0.1", server_port=app_port, prevent_thread_lock=True, quiet=True)
        console.rule("modelyard demo is running")
        console.print(f"news API (BentoML):  POST {api_url}/classify   OpenAPI: {api_url}/docs   "
                      f"metrics: {api_url}/metrics")
        console.print(f"demo app (Gradio):   http://127.0.0.1:{app_port}")
        console.print(f"API log: {log}.  Ctrl-C stops everything.")
        while server.poll() is None:
            time.sleep(0.5)
        console.print(f"[red]the news API exited with code {server.returncode}; see {log}[/]")
    except KeyboardInterrupt:
        console.print("stopping the demo")
    finally:
        if app is not None:
            app.close()
        stop_server(server)


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt
