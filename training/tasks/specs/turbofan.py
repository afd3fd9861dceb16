from training.tasks.specs import TaskSpec

SPEC = TaskSpec(
    name="turbofan",
    summary="Turbofan (NASA C-MAPSS): predict remaining useful life, or score anomalies by reconstruction.",
    recipe="training.tasks.turbofan",
    models="training.models.turbofan",
    data_subdir="cmapss",
    headline=("rmse", "test RMSE (cycles)"),
    compared=("rmse", "nasa_score", "alert_f1"),
    service="serving.turbofan_service",
    predictor="serving.predictor:TurbofanPredictor",
    tab="apps.tabs.turbofan",
)
