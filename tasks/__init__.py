"""Data for the benchmark: the cell-line catalogue, the LIVECell reader (real or synthetic) and
the episode sampler. Knows nothing of models or algorithms."""

from tasks.catalogue import LINES, CellLine, UnknownCellLine, cell_line, line_of_file

__all__ = ["LINES", "CellLine", "UnknownCellLine", "cell_line", "line_of_file"]
