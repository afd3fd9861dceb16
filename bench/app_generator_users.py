"""People pressing Generate together in the Gradio app, through `gradio_client`: how long each waits when alone and
when N press it at once, with the app in front of the generator API (its continuous batcher decodes them together).

    python bench/app_generator_users.py --checkpoint runs/demo/generator [--users 4] [--tokens 80]

Each user asks for the same number of new tokens (greedy, a stop string that never occurs, so none ends early).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "= The River Thames =\n\nThe River Thames flows through"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=80)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--port", type=int, default=3174)
    args = parser.parse_args()
    from gradio_client import Client

    from serving.server import start_server, stop_server, wait_ready

    api = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as work:
        server = start_server("generator", Path(args.checkpoint), args.port, args.runtime, log=Path(work) / "api.log")
        app = subprocess.Popen([sys.executable, "-m", "apps.cli", "app", "--generator-api", api, "--port",
                                str(args.port + 1)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(api, server, timeout=300)
            client = None
            for _ in range(240):
                try:
                    client = Client(f"http://127.0.0.1:{args.port + 1}", verbose=False)
                    break
                except Exception:  # noqa: BLE001 - the app is still starting
                    time.sleep(0.5)
            if client is None:
                raise SystemExit("the app did not start")

            def press() -> float:
                begin = time.perf_counter()
                client.predict(PROMPT, args.tokens, 0.0, 0, 1.0, 1.0, 0, "\u2603", api_name="/generate_text")
                return time.perf_counter() - begin

            press()  # warm up
            alone = [press() for _ in range(3)]
            with ThreadPoolExecutor(args.users) as pool:
                together = sorted(pool.map(lambda _: press(), range(args.users)))
        finally:
            app.terminate()
            stop_server(server)
    table = Table(title=f"Generate pressed in the app (gradio_client), {args.tokens} new tokens each, "
                        f"{args.runtime} runtime")
    table.add_column("users at once")
    table.add_column("seconds each waited", justify="right")
    table.add_row("1", ", ".join(f"{s:.2f}" for s in alone))
    table.add_row(str(args.users), ", ".join(f"{s:.2f}" for s in together))
    Console(width=None if sys.stdout.isatty() else 140).print(table)


if __name__ == "__main__":
    main()
