"""What each task is, declared once (`TaskSpec`), and the registry of tasks: one line per task in `REGISTERED`, the
module that holds its `SPEC`.

The command line, training's launcher, export, serving, the app, the demo, tune and compare all read a task from
here; none of them names a task. A spec module imports nothing heavy, so listings and `--help` stay fast; the parts
that need torch (the recipe, the service, the tab) are named by module path and imported when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from training.demo_runs import DemoRun
from training.options import Option

# The tasks in the order the demo trains and serves them (its API ports follow it) and the app shows their tabs. A
# task's spec may live anywhere importable (a plugin's package too); its SPEC.name is the name commands take.
REGISTERED = (
    "training.tasks.specs.turbofan",
    "training.tasks.specs.news",
    "training.tasks.specs.image",
    "training.tasks.specs.sales",
    "training.tasks.specs.generator",
)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    summary: str  # one line, for listings
    recipe: str  # module with build_job, save, evaluate and synthesize (and tune_space if tunable)
    models: str  # module with ARCHS (the architectures it builds) and build(config) -> nn.Module
    data_subdir: str  # the task's folder under MODELYARD_DATA
    headline: tuple[str, str]  # the report key that sums a run up, and its label
    compared: tuple[str, ...] = ()  # further report keys `modelyard compare` shows
    precision: str = "fp32"  # what --precision auto picks where the device computes it in hardware
    hf_model: bool = False  # a transformers model: colossalai hybrid can split it with shardformer
    onnx_file: str = "model.onnx"  # what `modelyard export` writes and the onnx runtime serves
    exporter: str = "training.export:export_traced"  # "module:function(ckpt, weights) -> Exported" that writes it
    # further `modelyard export --format` forms: name -> "module:function(ckpt, out folder | None) -> Exported"
    formats: Mapping[str, str] = field(default_factory=dict)
    runtimes: tuple[str, ...] = ("onnx", "torch")  # what its service runs on, the default first
    service: str | None = None  # module with SERVICE (its BentoML class), ROUTE and OPTIONS
    predictor: str | None = None  # "module:Class" that answers in-process (the app without an API)
    tab: str | None = None  # apps.tabs module: TITLE, OPTIONS, wanted, build
    tune_monitor: tuple[str, str] | None = None  # (validation metric, max|min): the recipe has tune_space
    options: tuple[Option, ...] = ()  # its own command-line options (`train TASK --help` shows them)
    evaluate_options: tuple[Option, ...] = ()  # what its recipe's evaluate takes besides the data folder
    demo_runs: Callable[[], list[DemoRun]] = list  # what `modelyard demo` trains for it (time-boxed)
    limits: str = ""  # the model card's "intended use and limits"
    live: str | None = None  # "module:Class" the demo runs on the checkpoint of a run marked live (its stream part)

    @property
    def tunable(self) -> bool:
        return self.tune_monitor is not None

    def recipe_module(self) -> ModuleType:
        return importlib.import_module(self.recipe)


def task_specs() -> list[TaskSpec]:
    return [importlib.import_module(module).SPEC for module in REGISTERED]


def load_named(path: str) -> Any:
    """What a spec names as "module:attribute", imported."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def export_formats() -> list[str]:
    """What `modelyard export --format` offers: onnx, and every format some task's spec adds."""
    return ["onnx", *sorted({name for spec in task_specs() for name in spec.formats})]


def task_spec(name: str) -> TaskSpec:
    specs = {spec.name: spec for spec in task_specs()}
    if name not in specs:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(specs)}")
    return specs[name]
