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
    # --precision auto: bf16 where the CPU or GPU computes it natively. Where it is emulated (an AVX2 CPU without
    # AVX-512 BF16 or AMX), a SmolLM2 LoRA step in bf16 did not finish in ten minutes, where fp32 takes about 8 s.
    precision="bf16",
    hf_model=True,
    onnx_file="decoder.onnx",  # the decoder graph ONNX Runtime decodes with
    exporter="training.decoder_onnx:export_for_serving",
    service="serving.generator_service",
    tab="apps.tabs.generator",
)
