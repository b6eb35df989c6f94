"""environment.yml and pyproject.toml list the same dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {s.replace(" ", "") for s in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {s.replace(" ", "") for s in dep["pip"] if not s.startswith("-e")}
        elif _name(dep) not in ("python", "pip"):
            listed.add(dep.replace(" ", ""))
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject.toml: {wanted - listed}"


def test_every_package_folder_is_installed() -> None:
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    installed = set(find_packages(str(ROOT), include=find["include"]))
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "anomalymap_helpers").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert folders == installed, f"folders without __init__.py or outside the find pattern: {folders ^ installed}"


def test_the_product_ships_without_the_instruments(capsys) -> None:
    """The wheel holds the package alone; the user's command line names the product's verbs; every
    script in benchmarks/ says what question it answers and has its own --help."""
    import subprocess
    import sys

    from setuptools import find_packages

    from anomalymap_helpers.commands.cli import main

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not [p for p in find_packages(str(ROOT), include=find["include"]) if not p.startswith("anomalymap_helpers")]
    with pytest.raises(SystemExit):
        main(["--help"])
    verbs = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert verbs == ["run", "train", "export", "predict", "params", "example-folder", "benchmark"]
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if "main(" in p.read_text() and not p.name.startswith("_"))
    assert len(scripts) == 21, scripts
    for script in scripts:
        text = script.read_text()
        assert text.startswith('"""') and '__name__ == "__main__"' in text, script.name
    # All at once (each spends its 1-2 s importing torch), then each checked.
    procs = [subprocess.Popen([sys.executable, str(s), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd="/") for s in scripts]
    for script, proc in zip(scripts, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith("usage: "), script.name + err
