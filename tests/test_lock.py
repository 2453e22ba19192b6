"""requirements/lock.txt, which ``make setup`` (so ``make quickstart``, ``make test`` and CI) installs
with, pins one exact version of every package, and it still fits pyproject.toml: each requirement of
peftlab and of its ``test`` extra is pinned at a version inside its range (a dependency added or a range
moved without ``make lock`` fails here, naming it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;+]+)", line.strip())
        assert m, f"{LOCK.name}:{n}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{LOCK.name}:{n}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def _requirements() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["test"])


def test_the_lock_pins_every_requirement_inside_its_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins()
    assert "peftlab" not in pins, "the lock pins third-party packages only"
    wrong = []
    for text in _requirements():
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            wrong.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            wrong.append(f"{req.name}=={pinned} is outside {req.specifier}")
    assert not wrong, "requirements/lock.txt is stale (run `make lock`): " + "; ".join(wrong)


def test_the_makefile_installs_with_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK ?= requirements/lock.txt" in makefile
    installs = [line for line in makefile.splitlines() if "$(BIN)/python -m pip install" in line]
    assert len(installs) == 3 and all("$(PINNED)" in line for line in installs), installs
