"""The command line is built from declarations: `train TASK` takes the engine's options and that task's own, `serve
TASK` the server's and that service's, `app` each tab's; every task, service and tab declares what the CLI needs."""

import importlib
from dataclasses import fields

import pytest

from apps.tabs import tab_modules
from serving.server import served_tasks, service_path
from tests.conftest import assert_clean_failure, run_cli_here
from training.config import ENGINE_OPTIONS, TrainConfig
from training.options import Option, resolve
from training.tasks import get_task, task_names
from training.tasks.specs import task_spec

TASKS = task_names()
SERVICES = {task: service_path(task) for task in served_tasks()}


def test_train_lists_every_task_and_each_task_shows_engine_options_then_its_own():
    listing = run_cli_here("train", "--help")
    assert listing.returncode == 0 and all(task in listing.stdout for task in TASKS), listing.stdout
    for task in TASKS:
        result = run_cli_here("train", task, "--help")
        assert result.returncode == 0, result.stderr
        text = result.stdout
        engine, own = text.index("Engine options:"), text.index(f"{task} options:")
        assert engine < own
        for option in ENGINE_OPTIONS:
            assert option.flag in text[engine:own], option.flag
        for option in task_spec(task).options:
            assert option.flag in text[own:], option.flag
        others = {o.flag for t in TASKS if t != task for o in task_spec(t).options}
        mine = {o.flag for o in task_spec(task).options}
        for flag in others - mine:
            assert f"{flag} " not in text, f"{flag} of another task in train {task} --help"


def test_an_option_of_another_task_is_refused_in_one_line(tmp_path):
    result = run_cli_here("train", "news", "--out", tmp_path / "x", "--subset", "FD002")
    assert_clean_failure(result, "No such option '--subset'")
    result = run_cli_here("train", "turbofan", "--out", tmp_path / "x", "--max-length", "64")
    assert_clean_failure(result, "No such option '--max-length'")
    assert_clean_failure(run_cli_here("train", "nosuchtask", "--out", tmp_path), "nosuchtask")


def test_serve_takes_the_server_options_and_that_services_own():
    for task in SERVICES:
        result = run_cli_here("serve", task, "--help")
        assert result.returncode == 0, result.stderr
        for flag in ("--checkpoint", "--port", "--host", "--runtime"):
            assert flag in result.stdout
        service = importlib.import_module(SERVICES[task])
        for option in service.OPTIONS:
            assert option.flag in result.stdout
    assert "--max-texts" not in run_cli_here("serve", "turbofan", "--help").stdout


def test_app_takes_each_tabs_options_and_the_old_news_flag():
    text = run_cli_here("app", "--help").stdout
    for tab in tab_modules():
        for option in tab.OPTIONS:
            assert option.flag in text
    assert "--api-url" in text  # the documented name of --news-api keeps working
    assert_clean_failure(run_cli_here("app"), "no tab to show")


def test_every_task_service_and_tab_declares_what_the_product_needs():
    config_fields = {f.name for f in fields(TrainConfig)}
    assert all(option.name in config_fields for option in ENGINE_OPTIONS)
    for task in TASKS:
        recipe = get_task(task)
        assert task_spec(task).name == task and all(isinstance(o, Option) for o in task_spec(task).options)
        assert len(task_spec(task).headline) == 2 and task_spec(task).demo_runs()
        for name in ("build_job", "save", "evaluate", "synthesize"):
            assert callable(getattr(recipe, name))
        assert callable(getattr(recipe, "tune_space", None)) == task_spec(task).tunable
    for path in SERVICES.values():
        service = importlib.import_module(path)
        assert hasattr(service, service.SERVICE) and service.ROUTE.startswith("/")
    for tab in tab_modules():
        assert tab.TITLE and callable(tab.build) and callable(tab.wanted)


def test_options_fill_defaults_and_refuse_what_is_not_declared():
    options = (Option("window", int, 30), Option("teacher", str, None))
    assert resolve(options, {"teacher": "x"}, "task t") == {"window": 30, "teacher": "x"}
    with pytest.raises(ValueError, match="task t has no option --max-length"):
        resolve(options, {"max_length": 64}, "task t")


def test_option_choices_name_what_the_code_builds():
    """A spec imports nothing heavy, so where an option's choices are what a data or model module defines, the spec
    spells them out and this keeps the two in step."""
    from training.data.cmapss import SUBSETS
    from training.models import causal_lm, image, turbofan

    def choices(task: str, name: str) -> tuple[str, ...]:
        return next(option.choices for option in task_spec(task).options if option.name == name)

    assert choices("turbofan", "subset") == tuple(SUBSETS)
    assert set(choices("turbofan", "model")) == set(turbofan.ARCHS)
    assert choices("image", "model") == tuple(image.ARCHS)
    assert choices("generator", "size") == tuple(causal_lm.CONFIGS)
