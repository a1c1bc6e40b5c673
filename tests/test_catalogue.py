"""The cell-line catalogue: one canonical name per line, every spelling users meet resolves to it."""

from __future__ import annotations

import pytest

from tasks.catalogue import LINES, CellLine, UnknownCellLine, cell_line, line_of_file

CANONICAL = ["A172", "BT-474", "BV-2", "Huh7", "MCF7", "SH-SY5Y", "SkBr3", "SK-OV-3"]
PREFIXES = ["A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3"]
FOLDERS = ["a172", "bt474", "bv2", "huh7", "mcf7", "shsy5y", "skbr3", "skov3"]


def test_eight_lines_in_paper_order():
    assert [line.name for line in LINES] == CANONICAL
    assert [line.prefix for line in LINES] == PREFIXES
    assert [line.folder for line in LINES] == FOLDERS
    assert len(set(LINES)) == 8


@pytest.mark.parametrize("i", range(8))
def test_every_spelling_resolves(i):
    canonical, prefix, folder = CANONICAL[i], PREFIXES[i], FOLDERS[i]
    spellings = {canonical, prefix, folder, canonical.upper(), canonical.lower(), prefix.upper(), canonical.replace("-", "")}
    for spelling in spellings:
        assert cell_line(spelling) is LINES[i], spelling
    assert cell_line(LINES[i]) is LINES[i]
    assert str(LINES[i]) == canonical


def test_known_alternative_spellings():
    assert cell_line("sh-sy5y") is cell_line("SHSY5Y")
    assert cell_line("sk-ov-3") is cell_line("SKOV3") is cell_line("SKOV-3")
    assert cell_line("bt-474") is cell_line("BT474")
    assert cell_line(" Huh7 ") is cell_line("HUH7")


@pytest.mark.parametrize("name", ["HeLa", "", "MCF-10A", "A17", "BT-4744"])
def test_unknown_names_list_the_valid_ones(name):
    with pytest.raises(UnknownCellLine) as err:
        cell_line(name)
    message = str(err.value)
    assert repr(name) in message and all(c in message for c in CANONICAL) and "\n" not in message
    assert isinstance(err.value, ValueError)  # the CLI reports ValueErrors as one-line errors


def test_line_of_file():
    assert line_of_file("BT474_Phase_C3_1_01d04h00m_4.tif") is cell_line("BT-474")
    assert line_of_file("SHSY5Y_Phase_D10_1_02d08h00m_4.tif").name == "SH-SY5Y"
    assert line_of_file("SKOV3_Phase_H4_1_01d12h00m_1.tif").folder == "skov3"
    with pytest.raises(UnknownCellLine):
        line_of_file("HeLa_Phase_A1_1_00d00h00m_1.tif")


def test_cell_lines_are_values():
    assert CellLine("MCF7", "MCF7") == cell_line("mcf7")
    assert {cell_line("bv2"): 1}[cell_line("BV-2")] == 1


def test_livecell_readme_spelling_of_sh_sy5y():
    assert cell_line("SH-SHY5Y").name == "SH-SY5Y"
