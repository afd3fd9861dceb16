from training.tasks.specs import TaskSpec

SPEC = TaskSpec(
    name="news",
    summary="News topics (AG News): fine-tune a pretrained transformer encoder to tell World/Sports/Business/Sci-Tech.",
    recipe="training.tasks.news",
    models="training.models.text_classifier",
    data_subdir="ag_news",
    headline=("accuracy", "test accuracy"),
    compared=("accuracy", "macro_precision", "macro_recall", "macro_f1"),
    hf_model=True,
    service="serving.news_service",
    predictor="serving.predictor:NewsPredictor",
    tab="apps.tabs.news",
)
