"""Click commands built from option declarations (training.options.Option): `modelyard train TASK`, `serve TASK`
and `app` take the options their engine, task, service or tab declares, and nothing else.

A verb whose subcommands are tasks is a `LazyGroup`: it lists every task without importing any, and builds a task's
command (which imports its recipe or service module) only when that task is named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from training.options import Option


def click_option(option: Option) -> click.Option:
    if option.type is bool:
        decls = [f"{option.flag}/--no-{option.flag[2:]}"] if option.default else [option.flag]
        return click.Option([*decls, option.name], is_flag=True, default=bool(option.default), help=option.help,
                            show_default=bool(option.default))
    if option.choices:
        kind: click.ParamType = click.Choice(option.choices)
    elif option.type is Path:
        kind = click.Path(path_type=Path)
    elif option.type in (int, float) and option.minimum is not None:
        kind = (click.IntRange if option.type is int else click.FloatRange)(min=option.minimum)
    else:
        kind = {int: click.INT, float: click.FLOAT}.get(option.type, click.STRING)
    return click.Option([option.flag, *option.aliases, option.name], type=kind, default=option.default,
                        required=option.required, multiple=option.multiple, help=option.help,
                        show_default=option.default is not None)


class SectionedCommand(click.Command):
    """Help that lists options under headings (the engine's, then the task's), in declaration order."""

    def __init__(self, *args: Any, sections: Sequence[tuple[str, Sequence[str]]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        by_name = {param.name: param for param in self.get_params(ctx)}
        shown: set[str] = set()
        for title, names in self.sections:
            rows = [record for name in names if name in by_name
                    if (record := by_name[name].get_help_record(ctx)) is not None]
            shown.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [record for name, param in by_name.items() if name not in shown and isinstance(param, click.Option)
                if (record := param.get_help_record(ctx)) is not None]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


def build_command(name: str, help_text: str, sections: Sequence[tuple[str, Iterable[Option]]],
                  callback: Callable[..., Any]) -> click.Command:
    """A command taking every option of `sections` (title, options); `callback` gets them as keyword arguments."""
    params, titled = [], []
    for title, options in sections:
        options = list(options)
        params.extend(click_option(option) for option in options)
        titled.append((title, [option.name for option in options]))
    return SectionedCommand(name, params=params, callback=callback, help=help_text, sections=titled,
                            context_settings={"max_content_width": 120})


class LazyGroup(click.Group):
    """Subcommands named by `names()`, each built by `build(name)` on first use; `summary(name)` lists them."""

    def __init__(self, name: str, names: Callable[[], list[str]], build: Callable[[str], click.Command],
                 summary: Callable[[str], str], **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._names, self._build, self._summary = names, build, summary

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._names()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._build(cmd_name) if cmd_name in self._names() else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._summary(name)) for name in self._names()]
        if rows:
            with formatter.section("Tasks"):
                formatter.write_dl(rows)
