from training.tasks.specs import TaskSpec

SPEC = TaskSpec(
    name="generator",
    summary="Text generator (WikiText-2): fine-tune a causal language model, all weights or LoRA, and report "
            "perplexity with samples.",
    recipe="training.tasks.generator",
    models="training.models.causal_lm",
    data_subdir="wikitext2",
    headline=("test_perplexity", "test perplexity"),
    compared=("zero_shot_test_perplexity",),
    precision="bf16",
    hf_model=True,
    onnx_file="decoder.onnx",  # the decoder graph ONNX Runtime decodes with
    exporter="training.decoder_onnx:export_for_serving",
    service="serving.generator_service",
    tab="apps.tabs.generator",
)
