from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file does not match its format; names the file, the line and what was expected."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = Path(path), line, problem


def open_text(path: Path):
    """Open a text file that may be stored xz-compressed (`name.txt.xz`)."""
    import lzma

    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def find_data_file(data_dir: Path, name: str) -> Path:
    """`name` in `data_dir`, or its `.xz` twin; a clear error when neither exists."""
    for candidate in (data_dir / name, data_dir / f"{name}.xz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{data_dir / name}: file not found (also looked for {name}.xz)")
