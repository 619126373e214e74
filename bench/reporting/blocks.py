"""What a report is made of: sections (per model or run-wide) holding prose, lists, tables and the charts they drew."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Note:
    """A paragraph of commentary on what follows (set apart from the figures in HTML)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))


@dataclass(frozen=True)
class Table:
    """Headers and rows of cells already formatted as text (a dash where a figure is missing)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", tuple(self.headers))
        object.__setattr__(self, "rows", tuple(tuple(r) for r in self.rows))


@dataclass(frozen=True)
class HeatMap(Table):
    """A table whose cells carry a background (`shades`, a CSS colour or gradient per cell, "" for none):
    in HTML the cells are coloured; in Markdown it is the plain table."""

    shades: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shades", tuple(tuple(r) for r in self.shades))


@dataclass(frozen=True)
class Chart:
    """A PNG a plotting function drew, and its caption. `path` is where the file is now: the report
    draws into a staging folder, so the writers are told where it will be linked from."""

    path: Path
    title: str


@dataclass(frozen=True)
class Section:
    """A heading and what it holds. A section inside another is one heading level deeper; `model`
    names the model it is about ("" for run-wide sections)."""

    title: str
    blocks: tuple[Block, ...]
    model: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def charts(self) -> Iterator[Chart]:
        """Every chart in this section and the sections inside it, in reading order."""
        for b in self.blocks:
            if isinstance(b, Chart):
                yield b
            elif isinstance(b, Section):
                yield from b.charts()

    def sections(self) -> Iterator[Section]:
        """This section and every section inside it, in reading order."""
        yield self
        for b in self.blocks:
            if isinstance(b, Section):
                yield from b.sections()


@dataclass(frozen=True)
class Details(Section):
    """A section folded away in HTML (<details>), opened by a click; in Markdown an ordinary section."""


Block = Union[Paragraph, Note, Bullets, Table, Chart, Section]

