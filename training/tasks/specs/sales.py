from training.tasks.specs import TaskSpec

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
)
