"""``python -m benchmark data download|synth|info``: wiring, output, help and one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from test_download import Server, bucket
from test_livecell import write_dataset

import tasks.synth
from benchmark.cli import build_parser, main
from tasks.livecell import LiveCell


def data_parsers() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    data = sub.choices["data"]
    actions = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    return {"data": data, **actions.choices}


def test_every_option_is_explained():
    parsers = data_parsers()
    assert set(parsers) == {"data", "download", "synth", "info"}
    for name, parser in parsers.items():
        assert parser.description, name
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 15, (name, action.dest)


def test_help_runs_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "benchmark", "data", "download", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--base-url" in out and "resumes" in out


def test_info_on_the_real_sample(sample_root, capsys):
    assert main(["data", "info", "--root", str(sample_root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["line"], r["split"], r["images"], r["cells"]) for r in rows] == [
        ("BT-474", "val", 2, 351), ("Huh7", "val", 1, 73), ("MCF7", "val", 2, 819),
    ]
    assert all(100 < r["median_intensity"] < 160 and 0 < r["cover_fraction"] < 1 for r in rows)


def test_info_table(tmp_path, capsys):
    root = write_dataset(tmp_path / "set")
    assert main(["data", "info", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "BT-474" in out and "MCF7" in out and "solidity" in out
    assert sum(line.lstrip().startswith(("BT-474", "MCF7")) for line in out.splitlines()) == 6  # 2 lines x 3 splits


def test_info_legend_defines_every_column():
    from benchmark.commands.data import HEADERS, LEGEND

    assert list(LEGEND) == list(HEADERS.values())


def test_info_and_synth_without_root_use_the_default_set(tmp_path, monkeypatch, capsys):
    default = write_dataset(tmp_path / "default", lines=("SkBr3",))
    monkeypatch.setattr(tasks.synth, "default_root", lambda: default)
    assert main(["data", "synth"]) == 0
    assert str(default) in capsys.readouterr().err.replace("\n", "")
    assert main(["data", "info", "--json"]) == 0
    assert {r["line"] for r in json.loads(capsys.readouterr().out)} == {"SkBr3"}


@pytest.mark.slow
def test_synth_then_info(tmp_path, capsys):
    root = tmp_path / "synth"
    assert main(["data", "synth", "--root", str(root), "--seed", "3", "--images-per-line", "3"]) == 0
    assert main(["data", "info", "--root", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 * 3 and {r["images"] for r in rows} == {1}
    assert "seed 3" in json.loads((root / "annotations" / "LIVECell" / "livecell_coco_val.json").read_text())["info"]["description"]


def test_download_through_the_cli(tmp_path, capsys):
    root = tmp_path / "root"
    with Server(bucket(tmp_path)) as server:
        assert main(["data", "download", "--root", str(root), "--base-url", server.url]) == 0
        assert main(["data", "download", "--root", str(root), "--base-url", server.url]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "28 fetched, 0 resumed, 0 already present" in err and "0 fetched, 0 resumed, 28 already present" in err
    assert len(LiveCell(root).images("MCF7", "val")) == 4


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "info", "--root", "{tmp}/nowhere"], "LIVECell root not found"),
        (["data", "info", "--root", "{tmp}/a-file"], "a-file: is not a folder"),
        (["data", "synth", "--seed", "1"], "need --root"),
        (["data", "synth", "--root", "{tmp}/full", "--images-per-line", "2"], "images_per_line"),
        (["data", "download", "--root", "{tmp}/dl", "--base-url", "http://127.0.0.1:9/"], "cannot connect"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "a-file").write_text("")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1 and "Traceback" not in err
