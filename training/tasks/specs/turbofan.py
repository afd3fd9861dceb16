from pathlib import Path

from training.demo_runs import DemoRun, real_data_folder
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

# --- what `modelyard demo` trains -------------------------------------------------------------------------------

def demo_runs() -> list[DemoRun]:
    """The ensemble the API serves, and a single LSTM distilled from it for the stream monitor, which scores every
    message (a third of the ensemble's cost). Real FD001 when MODELYARD_DATA has it."""
    folder = real_data_folder(SPEC.data_subdir, "train_FD001.txt*")
    data = {"data_dir": folder} if folder else {"synthetic": True}
    note = (f"data: real NASA C-MAPSS FD001 from {folder}" if folder else
            "data: generated C-MAPSS-format data (set MODELYARD_DATA to a folder with cmapss/ for real data)")
    return [DemoRun(SPEC.name, "remaining-useful-life model (an ensemble of LSTMs)", {**data, "time_limit": 150},
                    data_note=note),
            DemoRun(f"{SPEC.name}-monitor", "one LSTM distilled from the ensemble, for the stream monitor",
                    {**data, "time_limit": 60}, {"teacher": f"@{SPEC.name}", "members": 1}, note, serve=False,
                    live="stream monitor")]


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
    limits=("Estimating the remaining useful life of turbofan engines like NASA C-MAPSS's simulated fleet, and "
            "raising maintenance alerts from it. Trained on simulation (FD001: one operating condition, one fault "
            "mode): it has not seen real engines, and other operating conditions or fault modes (FD002-FD004) are "
            "outside what it learned. An estimate is no substitute for an inspection."),
    demo_runs=demo_runs,
    live="streaming.live_demo:LiveMonitor",
)
