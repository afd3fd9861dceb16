from training.options import Option
from training.tasks.specs import TaskSpec

OPTIONS = (
    Option("model", str, "lstm", "lstm or gru: the recurrent cell of the global network", choices=("lstm", "gru")),
    Option("context", int, 112, "days of history the network reads for each forecast", minimum=28),
    Option("hidden", int, 64, "hidden units of the recurrent cell", minimum=4),
    Option("layers", int, 1, "recurrent layers", minimum=1),
    Option("origin_stride", int, 1, "days between two training windows' forecast origins (larger: fewer windows "
                                    "per epoch, for many series)", minimum=1),
    Option("series", int, None, "use only the first N series (quick runs)", minimum=1),
    Option("baselines", str, "all", "evaluation: the baselines to fit beside the network, comma-separated from "
                                    "seasonal_naive, ets, arima, lightgbm, xgboost, prophet; all or none"),
)

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
)
