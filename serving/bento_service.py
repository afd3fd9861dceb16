"""What a modelyard Bento serves (`bentoml serve TAG`, from any folder): its task's BentoML service, on the model the
Bento was built with, read from BentoML's model store (the Bento's own, or this machine's).

The Bento's arguments (`bentoml.use_arguments`, written by `modelyard bento`) name the task and the model tag; the
service then loads the stored model as it loads any checkpoint folder, verifying every file's sha256 first.
"""

from __future__ import annotations

import os

import bentoml

from serving.server import service_module

_args = bentoml.use_arguments()
_model = bentoml.models.BentoModel(_args.model)
# A Bento runs the same service class `modelyard serve` does; that class takes its checkpoint from this variable.
os.environ["MODELYARD_CHECKPOINT"] = str(_model.resolve().path)
_module = service_module(_args.task)
Service = getattr(_module, _module.SERVICE)
