"""Dependencies: pyproject.toml's floors sit above the advisories they name, constraints.txt
pins every package logferry pulls in (runtime, the operator extra, the dev tools) within
those floors and nothing else, `make venv` installs with it (the images: test_deploy_images),
and .venv holds exactly what it pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
MAKEFILE = ROOT / "Makefile"
OPERATIONS = ROOT / "docs" / "operations.md"
EXTRAS = ("dev", "operator")

# package: (floor in pyproject, a version the advisories affect, advisories it is above).
# The last field is what pyproject.toml and docs/operations.md name for that floor.
FLOORS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "aiohttp": (
        "3.14.5",
        "3.14.3",
        ("CVE-2026-128131", "GHSA-2g87-pp6c-29x5", "GHSA-5wr8-gcqf-gqf3", "CVE-2024-52304"),
    ),
    "msgpack": ("1.2.3", "1.2.2", ("CVE-2026-114613", "CVE-2026-57585")),
    "orjson": ("3.11.6", "3.11.5", ("CVE-2025-67221", "CVE-2024-27454")),
    "pyyaml": ("6.0", "5.3.1", ("CVE-2020-14343",)),
    "pydantic": ("2.6", "2.3.0", ("CVE-2024-3772",)),
}


def _project() -> dict[str, Any]:
    return dict(tomllib.loads(PYPROJECT.read_text())["project"])


def _requirements(*, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    project = _project()
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def _pins() -> dict[NormalizedName, Version]:
    pins: dict[NormalizedName, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        # Fully pinned: a name and an exact version, no ranges, markers, URLs or options.
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"constraints.txt:{number}: not NAME==VERSION: {line}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def _closure(root: str, extras: tuple[str, ...]) -> set[NormalizedName]:
    """Every distribution ``root[extras]`` needs in this environment, from the installed
    metadata (markers evaluated for this interpreter, extras followed)."""
    environment: dict[str, str] = dict(default_environment())
    seen: dict[NormalizedName, frozenset[str]] = {}
    pending = [(root, frozenset(extras))]
    while pending:
        name, wanted = pending.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, frozenset()) | wanted
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**environment, "extra": extra})
                for extra in (wanted or {""})
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return set(seen) - {canonicalize_name(root)}


# -- floors -------------------------------------------------------------------------------


@pytest.mark.parametrize("package", FLOORS)
def test_runtime_floors_sit_above_the_known_advisories(package: str) -> None:
    floor, vulnerable, advisories = FLOORS[package]
    (requirement,) = [r for r in _requirements(extras=()) if canonicalize_name(r.name) == package]
    lower_bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert lower_bounds, f"{requirement} has no floor"
    assert max(lower_bounds) >= Version(floor), requirement
    assert requirement.specifier.contains(floor), requirement
    assert not requirement.specifier.contains(vulnerable), requirement
    # The floor says why, where it is set and in the operations guide.
    pyproject, guide = PYPROJECT.read_text(), OPERATIONS.read_text()
    for advisory in advisories:
        assert advisory in pyproject, (package, advisory)
        assert advisory in guide, (package, advisory)


def test_every_runtime_dependency_has_a_floor() -> None:
    for requirement in _requirements(extras=()):
        assert any(s.operator == ">=" for s in requirement.specifier), requirement


# -- constraints.txt ----------------------------------------------------------------------


def test_constraints_pin_every_dependency_within_its_floor() -> None:
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_constraints_pin_exactly_what_logferry_pulls_in_and_venv_has_it() -> None:
    # Transitive dependencies too: an unpinned one would float in the images.
    pins = _pins()
    needed = _closure("logferry", EXTRAS)
    assert needed - pins.keys() == set(), "not pinned in constraints.txt"
    assert pins.keys() - needed == set(), "pinned in constraints.txt but nothing needs it"
    assert canonicalize_name("logferry") not in pins
    # make venv installs with the constraints: .venv holding other versions means the file
    # was edited without `make venv`, or .venv was changed by hand.
    installed = {name: Version(metadata.version(name)) for name in needed}
    assert {n: v for n, v in installed.items() if v != pins[n]} == {}


def test_constraints_hold_no_advisory_version() -> None:
    pins = _pins()
    for package, (floor, _, _) in FLOORS.items():
        assert pins[canonicalize_name(package)] >= Version(floor), package


# -- make venv ----------------------------------------------------------------------------


def test_make_venv_installs_with_the_constraints_and_reinstalls_when_they_change() -> None:
    makefile = MAKEFILE.read_text()
    stamp = re.search(r"^STAMP\s*:=\s*(.+)$", makefile, re.MULTILINE)
    assert stamp is not None
    # The stamp's name is a hash of both files, and its rule depends on both.
    assert re.search(r"cat pyproject\.toml constraints\.txt \|", stamp.group(1)), stamp.group(1)
    rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert rule is not None
    assert rule.group(1).split() == ["pyproject.toml", "constraints.txt"]
    installs = re.findall(r"^\t\$\(BIN\)/pip install (.*)$", makefile, re.MULTILINE)
    project_installs = [i for i in installs if "-e " in i]
    assert project_installs == ["--quiet -c constraints.txt -e '.[dev]'"]
