from pathlib import Path

from training.demo_runs import DemoRun, real_data_folder
from training.options import Option
from training.tasks.specs import TaskSpec

MAX_LENGTH = 128  # tokens per text

OPTIONS = (
    Option("model", str, None, "a Hugging Face encoder id or local folder (default all-MiniLM-L6-v2, offline)"),
    Option("train_file", Path, None, "training CSV (default DATA_DIR/train.csv)"),
    Option("eval_file", Path, None, "evaluation CSV (default DATA_DIR/test.csv)"),
    Option("train_rows", int, None, "when train and eval file are one file, this many rows (stratified) train and "
                                    "the rest evaluate", minimum=1),
    Option("max_length", int, MAX_LENGTH, "tokens per text", minimum=8),
    Option("layers", int, None, "keep the encoder's first N layers (default all)", minimum=1),
    Option("lowercase", bool, False, "lowercase texts"),
    Option("remove_stopwords", bool, False, "drop English stopwords (scikit-learn list)"),
    Option("augment", str, None, "delete,swap or all (token deletion, adjacent swaps)"),
)

# --- what `modelyard demo` trains -------------------------------------------------------------------------------

DEMO_TRAIN_ROWS = 6000  # of AG News test.csv's 7,600 (the only real split here); the other 1,600 evaluate


def demo_runs() -> list[DemoRun]:
    """MiniLM fine-tuned for one epoch on 6,000 rows of the real AG News test.csv (the other 1,600 evaluate), or on
    generated AG News-format data."""
    folder = real_data_folder(SPEC.data_subdir, "test.csv*")
    if folder is None:
        return [DemoRun(SPEC.name, "news topic classifier", {"synthetic": True, "epochs": 1, "time_limit": 150},
                        data_note="data: generated AG News-format data (set MODELYARD_DATA for real AG News)")]
    test = next(folder.glob("test.csv*"))
    return [DemoRun(SPEC.name, "news topic classifier", {"epochs": 1, "time_limit": 150},
                    {"train_file": test, "eval_file": test, "train_rows": DEMO_TRAIN_ROWS},
                    f"data: real AG News {test}: {DEMO_TRAIN_ROWS} stratified rows train, the rest evaluate")]


SPEC = TaskSpec(
    name="news",
    summary="News topics (AG News): fine-tune a pretrained transformer encoder to tell World/Sports/Business/Sci-Tech.",
    recipe="training.tasks.news",
    models="training.models.text_classifier",
    data_subdir="ag_news",
    headline=("accuracy", "test accuracy"),
    compared=("accuracy", "macro_precision", "macro_recall", "macro_f1"),
    hf_model=True,
    formats={"hf": "training.hf_export:export_hf"},
    service="serving.news_service",
    predictor="serving.predictor:NewsPredictor",
    tab="apps.tabs.news",
    options=OPTIONS,
    limits=("Sorting English news headlines and short articles into World, Sports, Business and Sci/Tech (AG News). "
           "Four topics only: a text about anything else is still put in one of them; text beyond the model's token "
           "limit is cut; it reflects the news sources AG News was collected from (2004-2005)."),
    demo_runs=demo_runs,
)
