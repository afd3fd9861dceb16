from pathlib import Path

from training.demo_runs import DemoRun
from training.options import Option
from training.tasks.specs import TaskSpec

# the files a sales checkpoint holds beside its weights, named once for the recipe that writes them and the
# predictor that reads them
HISTORY_FILE, SERIES_FILE = "history.safetensors", "series.csv"
SERVED_FILE, FORECASTS_FILE = "served_models.json", "forecasts.safetensors"  # written by evaluate

OPTIONS = (
    Option("model", str, "lstm", "lstm or gru: the recurrent cell of the global network", choices=("lstm", "gru")),
    Option("context", int, 112, "days of history the network reads for each forecast", minimum=28),
    Option("hidden", int, 64, "hidden units of the recurrent cell", minimum=4),
    Option("layers", int, 1, "recurrent layers", minimum=1),
    Option("origin_stride", int, 1, "days between two training windows' forecast origins (larger: fewer windows "
                                    "per epoch, for many series)", minimum=1),
    Option("series", int, None, "use only the first N series (quick runs)", minimum=1),
    Option("last_day", int, None, "use the sales up to day d_N (M5's numbering) as if the data ended there: its last "
                                  "28 days test, the 28 before validate (a backtest's run)", minimum=1),
    Option("baselines", str, "all", "evaluation: the baselines to fit beside the network, comma-separated from "
                                    "seasonal_naive, ets, arima, lightgbm, xgboost, prophet; all or none"),
)

EVALUATE_OPTIONS = (
    Option("cv", int, None, "also a rolling-origin evaluation: N windows of 28 days, the last one the test days, "
                            "each with every model fitted on the days before it (the network trained again with "
                            "the checkpoint's settings); each model's WRMSSE mean and spread", minimum=2),
    Option("cv_step", int, None, "with --cv: days between two windows (default 28)", minimum=1),
)

# --- what `modelyard demo` trains -------------------------------------------------------------------------------

def demo_runs() -> list[DemoRun]:
    """The LSTM on the 10 real M5 series (their price export converted once into the published layout), or on
    generated M5-format data."""
    import os

    from training.data.cache import cache_root
    from training.data.m5_synthetic import stage_real_subset

    root = os.environ.get("MODELYARD_DATA")
    real = Path(root) / SPEC.data_subdir if root else None
    engine = {"time_limit": 90, "epochs": 30, "early_stop_patience": 4}
    if real is None or not (real / "subset_zama-github_SPOT" / "sales_train_validation.csv").is_file():
        return [DemoRun(SPEC.name, "sales forecaster (M5)", {**engine, "synthetic": True},
                        data_note="data: generated M5-format data (set MODELYARD_DATA for the 10 real series)")]
    cache = cache_root() / "m5-real-subset"
    folder = stage_real_subset(real, cache)
    return [DemoRun(SPEC.name, "sales forecaster (M5)", {**engine, "data_dir": folder},
                    data_note=f"data: the 10 real M5 series from {real} (staged in {folder})")]


SPEC = TaskSpec(
    name="sales",
    summary="Sales (M5): forecast 28 days of unit sales for every series with one global LSTM or GRU.",
    recipe="training.tasks.sales",
    models="training.models.sales",
    data_subdir="m5",
    headline=("best_wrmsse", "test WRMSSE (best model or ensemble)"),
    compared=("network_wrmsse",),
    service="serving.sales_service",
    predictor="serving.sales_predictor:SalesPredictor",
    tab="apps.tabs.sales",
    options=OPTIONS,
    evaluate_options=EVALUATE_OPTIONS,
    limits=("Forecasting 28 days of daily unit sales for item-store series in the M5 (Walmart) format, with "
            "prediction intervals at the levels asked (80% by default). It knows the calendar (events, SNAP days) "
            "and prices, not promotions or stock-outs; a series it was not trained on needs its history posted."),
    demo_runs=demo_runs,
)
