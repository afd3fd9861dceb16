from pathlib import Path

from training.demo_runs import DemoRun, real_data_folder
from training.options import Option
from training.tasks.specs import TaskSpec

OPTIONS = (
    Option("model", str, "fastnet", "fastnet (default, fast residual CNN for 32x32), resnet20 / resnet56 (He et al. "
                                     "CIFAR ResNets), resnet18 (torchvision)",
           choices=("fastnet", "resnet20", "resnet56", "resnet18")),
    Option("width", int, None, "fastnet: channels of its first stage, doubled per stage (default 64)", minimum=4),
    Option("pretrained", Path, None, "weights to start from: safetensors, a modelyard checkpoint, or a torch file "
                                     "(read with torch.load(weights_only=True))"),
    Option("freeze_epochs", int, 0, "epochs that train only the classifier head first (with --pretrained)",
           minimum=0),
    Option("augment", str, "crop,flip", "crop, flip, rotate, cutout (comma-separated), all, or none"),
    Option("augment_strength", float, 0.5, "scales crop padding (4 px at 1.0), rotation (10 degrees), cutout (8 px)",
           minimum=0),
    Option("label_smoothing", float, 0.2, "label smoothing of the training loss", minimum=0),
    Option("train_images", int, None, "use this many of the training images (stratified), for quick runs",
           minimum=20),
    Option("tta", bool, True, "average predictions over the image and its mirror image (evaluation, serving)"),
    Option("tta_shift", int, 1, "with --tta, also over both moved this many pixels diagonally each way (6 views; "
                                "0: the two flips only)", minimum=0),
)

# --- what `modelyard demo` trains -------------------------------------------------------------------------------

# FastNet-32 in the demo's 4 minutes: 2.7x the images/s of FastNet-64, 10 epochs, test accuracy 0.866, where the
# default FastNet-64 had 0.840 after 4 minutes (of its 26 epochs)
DEMO_OPTIONS = {"width": 32}


def demo_runs() -> list[DemoRun]:
    """FastNet on the real CIFAR-10 JPEG images (or generated CIFAR-10 binary data), time-boxed."""
    folder = real_data_folder(SPEC.data_subdir, "train.tar")
    if folder is None:
        return [DemoRun(SPEC.name, "image classifier (CIFAR-10)", {"synthetic": True, "time_limit": 120}, DEMO_OPTIONS,
                        data_note="data: generated CIFAR-10-format data (set MODELYARD_DATA for the real images)")]
    return [DemoRun(SPEC.name, "image classifier (CIFAR-10)", {"data_dir": folder, "time_limit": 240}, DEMO_OPTIONS,
                    data_note=f"data: real CIFAR-10 images from {folder} (50,000 training, 5,000 test JPEGs)")]


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
    options=OPTIONS,
    tune_monitor=("val_accuracy", "max"),
    limits=("Classifying small photos into CIFAR-10's ten classes (airplane, automobile, bird, cat, deer, dog, frog, "
            "horse, ship, truck). Every image gets one of those ten labels, whatever it shows; larger images are "
            "resized to 32x32 pixels first, losing detail."),
    demo_runs=demo_runs,
)
