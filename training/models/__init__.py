"""Model definitions, each rebuilt from the plain `model` config stored in a checkpoint manifest."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(config: dict[str, Any]) -> nn.Module:
    from training.models import causal_lm, image, sales, text_classifier, turbofan

    if config.get("arch") == text_classifier.ARCH:
        return text_classifier.build_sequence_classifier(config["hf_config"])
    if config.get("arch") == causal_lm.ARCH:
        return causal_lm.build_causal_lm(config["hf_config"])
    if config.get("arch") in image.ARCHS:
        return image.build_image_model(config)
    if config.get("arch") in sales.ARCHS:
        return sales.build_sales_model(config)

    builders = {"lstm": turbofan.TurbofanLSTM, "transformer": turbofan.TurbofanTransformer,
                "lstm_autoencoder": turbofan.TurbofanAutoencoder}
    arch = config.get("arch")
    if arch not in builders:
        raise ValueError(f"unknown model architecture {arch!r}; known: {', '.join(sorted(builders))}")
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    return builders[arch](**kwargs)
