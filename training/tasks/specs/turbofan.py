from pathlib import Path

from training.options import Option
from training.tasks.specs import TaskSpec

WINDOW, ALERT_RUL = 30, 30.0  # cycles per model input; the alarm horizon in cycles
ENSEMBLE_MEMBERS = 3  # LSTMs averaged in the default model (see TurbofanLSTM); --members changes it
MODELS = {"rul": ("lstm", "transformer"), "reconstruction": ("lstm_autoencoder",)}

OPTIONS = (
    Option("subset", str, "FD001", "C-MAPSS subset", choices=("FD001", "FD002", "FD003", "FD004")),
    Option("model", str, None, "lstm or transformer (RUL); lstm_autoencoder (reconstruction)",
           choices=tuple(arch for archs in MODELS.values() for arch in archs)),
    Option("objective", str, "rul", "rul: predict remaining useful life; reconstruction: anomaly score",
           choices=tuple(MODELS)),
    Option("members", int, None, f"lstm: LSTMs averaged in one model (default {ENSEMBLE_MEMBERS})", minimum=1),
    Option("window", int, None, f"cycles per model input window (default {WINDOW})", minimum=1),
    Option("alert_rul", float, ALERT_RUL, "alarm horizon in cycles (truth: true RUL <= it)", minimum=0),
    Option("teacher", Path, None, "a trained RUL checkpoint whose predictions this model learns to copy "
                                  "(distillation, e.g. with --members 1)"),
)

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
    options=OPTIONS,
)
