"""The eight LIVECell cell lines and every spelling users meet for them.

LIVECell names a line three ways: a canonical name in the paper (``BT-474``), a file prefix
(``BT474_Phase_...tif``) and a lowercase folder (``annotations/LIVECell_single_cells/bt474``).
Everything else in the project speaks in :class:`CellLine` and resolves user input through
:func:`cell_line`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellLine:
    name: str  # canonical, as in the LIVECell paper: "BT-474"
    prefix: str  # file-name prefix: "BT474"

    @property
    def folder(self) -> str:
        """Folder name in ``LIVECell_single_cells`` and ``images_per_celltype``: "bt474"."""
        return self.prefix.lower()

    def __str__(self) -> str:
        return self.name


LINES: tuple[CellLine, ...] = (
    CellLine("A172", "A172"),
    CellLine("BT-474", "BT474"),
    CellLine("BV-2", "BV2"),
    CellLine("Huh7", "Huh7"),
    CellLine("MCF7", "MCF7"),
    CellLine("SH-SY5Y", "SHSY5Y"),
    CellLine("SkBr3", "SkBr3"),
    CellLine("SK-OV-3", "SKOV3"),
)


class UnknownCellLine(ValueError):
    """A name that matches none of the eight lines."""


def _key(name: str) -> str:
    return name.replace("-", "").replace("_", "").strip().lower()


_BY_KEY = {_key(line.name): line for line in LINES}
_BY_KEY[_key("SH-SHY5Y")] = _BY_KEY[_key("SH-SY5Y")]  # the spelling in LIVECell's own README


def cell_line(name: str | CellLine) -> CellLine:
    """Resolve any accepted spelling (canonical, prefix, folder; any case, hyphen or not)."""
    if isinstance(name, CellLine):
        return name
    try:
        return _BY_KEY[_key(name)]
    except KeyError:
        valid = ", ".join(line.name for line in LINES)
        raise UnknownCellLine(f"unknown cell line {name!r}; valid lines: {valid}") from None


def line_of_file(file_name: str) -> CellLine:
    """The line a LIVECell image belongs to, from its file-name prefix (``MCF7_Phase_...``)."""
    return cell_line(file_name.split("_", 1)[0])
