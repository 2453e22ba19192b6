"""What pyproject.toml declares is what the package imports: every third-party module imported anywhere
in ``peftlab/`` (module level or inside a function) comes from a declared dependency or extra, and every
required dependency is imported somewhere. And an export's model card carries the Hub's metadata."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _imported() -> dict[str, str]:
    """Top-level third-party module -> a file importing it."""
    out = {}
    for path in sorted((ROOT / "peftlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "peftlab" and top not in sys.stdlib_module_names:
                    out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_every_import_is_declared_and_every_dependency_imported():
    required = {_dist(r) for r in PYPROJECT["dependencies"]}
    extras = {_dist(r) for reqs in PYPROJECT["optional-dependencies"].values() for r in reqs}
    dists = packages_distributions()
    imported = _imported()
    undeclared = {m: f for m, f in imported.items()
                  if not {_dist(d) for d in dists.get(m, [m])} & (required | extras)}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    providing = {_dist(d) for m in imported for d in dists.get(m, [m])}
    unused = sorted(required - providing)
    assert not unused, f"declared dependencies that peftlab never imports: {unused}"


def test_optional_extras_are_named_for_what_they_enable():
    extras = PYPROJECT["optional-dependencies"]
    assert {_dist(r) for r in extras["trackers"]} == {"tensorboard"}
    assert "datasets" in {_dist(r) for r in extras["datasets"]}
    assert all(re.search(r"[<>]=?\s*\d", r) for reqs in (PYPROJECT["dependencies"], *extras.values()) for r in reqs), \
        "every requirement has a version range"


def test_an_export_card_carries_the_hubs_metadata():
    from types import SimpleNamespace

    from peftlab.methods.export import adapter_card

    spec = SimpleNamespace(init="pretrained", dtype="float32", quantize="none")
    card = adapter_card("google/flan-t5-small", spec, True, kind="LORA")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "peft" and meta["base_model"] == "google/flan-t5-small"
    assert {"peftlab", "lora", "base_model:adapter:google/flan-t5-small"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text2text-generation" and body.startswith("# LORA adapter")
    local = yaml.safe_load(adapter_card(str(ROOT / "models" / "mini-t5"), spec, False, kind="IA3").split("---\n")[1])
    assert "base_model" not in local and local["library_name"] == "peft" and local["pipeline_tag"] == "text-generation"
