"""The "Sales" tab: pick a store and an item, see its recent sales and the forecast of the days after them as a
chart, from the sales API (`--sales-api`) or the checkpoint in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.tabs.http import ApiError, post_json
from apps.tabs.svg import figure_svg
from training.options import Option

TITLE = "Sales"
OPTIONS = (
    Option("sales_checkpoint", Path, None, "sales checkpoint: the series to pick from and their history (and "
                                           "in-process forecasts when no --sales-api is given)"),
    Option("sales_api", str, None, "sales API base URL (from `modelyard serve sales`)"),
)
SHOWN_DAYS = 112


def wanted(values: dict[str, Any]) -> bool:
    return values.get("sales_checkpoint") is not None


def http_forecaster(url: str) -> Callable[[str, int], dict[str, Any]]:
    return lambda series_id, horizon: post_json(f"{url.rstrip('/')}/forecast",
                                                {"series_id": series_id, "horizon": horizon})


def forecast_chart(dates: list[str], sales: list[float], forecast: dict[str, Any] | None, title: str) -> str:
    """History and forecast as lines over real dates (a numeric time axis), the forecast's first day marked."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    with plt.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(9.5, 3.4), dpi=100)
        ax.plot(np.array(dates, dtype="datetime64[D]"), sales, color="#7f8c8d", linewidth=1.1, label="sales",
                gid="sales-history")
        if forecast is not None:
            ahead = np.array(forecast["dates"], dtype="datetime64[D]")
            ax.plot(ahead, forecast["forecast"], color="#2471a3", marker=".", markersize=4, linewidth=1.6,
                    label=f"forecast by {forecast['model']} ({len(ahead)} days)", gid="sales-forecast")
            bounds = forecast.get("quantiles") or {}
            levels = sorted(bounds, key=float)
            if len(levels) >= 2:  # the widest interval the API gives
                ax.fill_between(ahead, bounds[levels[0]], bounds[levels[-1]], color="#2471a3", alpha=0.15,
                                linewidth=0, gid="sales-interval",
                                label=f"{float(levels[-1]) - float(levels[0]):.0%} interval")
            ax.axvline(ahead[0], color="#aaaaaa", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_ylabel("units sold per day")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        fig.autofmt_xdate()
        fig.tight_layout()
        return figure_svg(fig)


def build(values: dict[str, Any]) -> None:
    import gradio as gr

    from serving.refusal import Refused
    from serving.sales_predictor import SalesPredictor

    predictor = SalesPredictor(values["sales_checkpoint"], values.get("runtime", "onnx"))
    if values.get("sales_api"):
        forecaster, source = http_forecaster(values["sales_api"]), f"the BentoML API at {values['sales_api']}"
    else:
        forecaster, source = predictor.forecast_known, f"checkpoint {values['sales_checkpoint']}"
    series = predictor.series
    stores = sorted(series["store_id"].unique())
    items_of = {store: sorted(series.loc[series["store_id"] == store, "item_id"]) for store in stores}
    gr.Markdown(f"Daily unit sales of one item in one store: its last {SHOWN_DAYS} days (to {predictor.last_date}) "
                f"and the forecast of the days after them, from {source}.")
    with gr.Row():
        store = gr.Dropdown(stores, value=stores[0], label="store", elem_id="sales-store")
        item = gr.Dropdown(items_of[stores[0]], value=items_of[stores[0]][0], label="item", elem_id="sales-item")
        horizon = gr.Slider(1, predictor.horizon, value=predictor.horizon, step=1, label="days ahead",
                            elem_id="sales-horizon")
        submit = gr.Button("Forecast", variant="primary", elem_id="sales-submit")
    chart = gr.HTML(forecast_chart([], [], None, "pick a store and an item"), elem_id="sales-chart")
    table = gr.Dataframe(headers=["date", "forecast"], label="forecast", interactive=False, elem_id="sales-table")

    def items(chosen_store: str):
        choices = items_of.get(chosen_store, [])
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None)

    def run(chosen_store: str, chosen_item: str, days: float):
        if not chosen_store or not chosen_item:
            raise gr.Error("Pick a store and an item first.")
        series_id = f"{chosen_item}_{chosen_store}"
        try:
            result = forecaster(series_id, int(days))
        except (ApiError, Refused) as exc:
            raise gr.Error(str(exc)) from None
        dates, sales = predictor.recent(series_id, SHOWN_DAYS)
        rows = [[d, round(v, 2)] for d, v in zip(result["dates"], result["forecast"], strict=True)]
        return forecast_chart(dates, sales, result, f"{chosen_item} at {chosen_store}"), rows

    store.change(items, inputs=store, outputs=item)
    submit.click(run, inputs=[store, item, horizon], outputs=[chart, table], api_name="forecast_sales")
