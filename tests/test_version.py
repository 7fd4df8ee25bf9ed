"""One version: detmine.__version__ == the installed metadata's; ``--version`` of the tools."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import detmine
from detmine.cli import add_version_argument, version_string

REPO = Path(__file__).resolve().parents[1]


def test_version_is_pep440_and_set_in_one_place():
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", detmine.__version__)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "detmine.__version__"}' in pyproject
    assert not re.search(r'(?m)^version\s*=\s*"', pyproject)  # no second, static version


def test_setuptools_reads_the_package_version():
    """What ``pip install .`` / ``pip install -e .`` will write into the metadata."""
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    config = pyprojecttoml.read_configuration(REPO / "pyproject.toml")
    assert config["project"]["version"] == detmine.__version__


def test_installed_metadata_matches_when_installed_from_this_tree():
    try:
        installed = importlib.metadata.version("detmine")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("detmine is not installed (run from the source tree)")
    if installed != detmine.__version__:
        pytest.skip(f"installed metadata {installed} predates the source's {detmine.__version__}: reinstall")
    assert installed == detmine.__version__


def _parse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    parser = add_version_argument(argparse.ArgumentParser(prog="some_tool"))
    parser.add_argument("config")  # a required argument does not stop --version
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    return exc.value.code, capsys.readouterr().out


def test_version_argument_prints_detmine_and_torch(capsys):
    code, out = _parse(["--version"], capsys)
    torch_version = importlib.metadata.version("torch")
    assert code == 0
    assert out == f"detmine {detmine.__version__} (torch {torch_version})\n"
    assert version_string() == out.strip()


def test_version_argument_leaves_other_arguments_alone():
    parser = add_version_argument(argparse.ArgumentParser(prog="some_tool"))
    parser.add_argument("config")
    assert vars(parser.parse_args(["cfg.yaml"])) == {"config": "cfg.yaml"}
    assert "--version" in parser.format_help()


def test_version_does_not_import_torch():
    code = "import argparse, sys; from detmine.cli import add_version_argument; " \
           "add_version_argument(argparse.ArgumentParser()); print('torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
