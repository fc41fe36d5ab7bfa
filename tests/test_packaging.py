"""What the project declares about itself: dependency ranges against the lock, and a wheel that works installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"


def declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def locked() -> dict[str, Version]:
    """``name -> version`` of every line of the lock (a line per package: ``name==version [; marker]``)."""
    out: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = Requirement(line)
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"lock line is not an exact pin: {line!r}"
        out[canonicalize_name(req.name)] = Version(pins[0].version)
    return out


@pytest.mark.parametrize("req", declared(), ids=str)
def test_each_dependency_is_a_compatible_range_not_a_pin(req: Requirement) -> None:
    ops = {s.operator for s in req.specifier}
    assert ops, f"{req}: give a range (lower bound: the tested major.minor)"
    assert not ops & {"==", "==="}, f"{req}: an exact pin belongs in requirements.lock, not pyproject.toml"
    assert ops & {">=", "~="}, f"{req}: needs a lower bound"


def test_every_declared_dependency_is_locked_inside_its_range() -> None:
    lock = locked()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is declared but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), \
            f"{req.name}=={lock[name]} in requirements.lock is outside pyproject.toml's {req.specifier}"


def test_requires_python_is_what_the_lock_was_resolved_for_and_this_interpreter_meets_it() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    match = re.search(r"--python-version (\S+)", LOCK.read_text())
    assert match, "requirements.lock's header names no --python-version (regenerate it with `make lock`)"
    lock_python = Version(match.group(1))
    lowest = min(Version(s.version) for s in requires if s.operator == ">=")
    assert lock_python == lowest, f"lock resolved for Python {lock_python}, requires-python starts at {lowest}"
    assert requires.contains(".".join(map(str, sys.version_info[:3]))), f"tests run on Python outside {requires}"


def test_install_stamp_depends_on_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\):.*\$\(LOCK\)", makefile, re.M)
    assert re.search(r"^LOCK\s*:=\s*requirements\.lock$", makefile, re.M)
    assert "pip install -q -r $(LOCK)" in makefile


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of what it is made of (setuptools' build/ folder in the checkout could
    hold files deleted since)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("adrec_spark", "conf"):  # symlinks=True: adrec_spark/conf stays the link to conf/
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(out), str(src)], check=True, cwd=out)
    (built,) = out.glob("adrec_spark-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_every_config_of_conf(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("adrec_spark/conf/")}
    assert shipped == {p.name: p.read_bytes() for p in (ROOT / "conf").glob("*.yaml")}


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = ("import adrec_spark.config as c; print(c.__file__); cfg = c.load_config(['demo']); "
             "print(cfg.train.max_train_rows, cfg.model.max_length)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0].startswith(str(site))         # the wheel's copy, not the source tree
    assert out[1] == "2000 128"                 # conf/demo.yaml's values
    printed = subprocess.run([sys.executable, "-m", "adrec_spark.cli", "config", "--conf", "cluster"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert "lakehouse: 's3a://my-bucket/adrec/lakehouse'  # file " + str(site) in printed
