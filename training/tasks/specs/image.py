from training.tasks.specs import TaskSpec

SPEC = TaskSpec(
    name="image",
    summary="Images (CIFAR-10): classify 32x32 photos into ten classes, from scratch or from pretrained weights.",
    recipe="training.tasks.image",
    models="training.models.image",
    data_subdir="cifar10",
    headline=("accuracy", "test accuracy"),
    compared=("accuracy", "macro_precision", "macro_recall", "macro_f1", "train_images_per_second",
              "inference_images_per_second"),
    precision="bf16",  # convolutions in bf16 where the hardware has it: 2.6x fp32's images/s on AVX-512 BF16
    service="serving.image_service",
    predictor="serving.image_predictor:ImagePredictor",
    tab="apps.tabs.image",
    tune_monitor=("val_accuracy", "max"),
)
