"""The layout the docs describe is the layout of the tree, and imports run one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
README_LAYOUT = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]

# What may sit at an app's root: the plugin contract and Django's own places.
APP_ROOTS = {
    "providers": {"__init__", "apps", "models", "base", "types", "errors", "http_provider"},
    "plugins_api": {"__init__", "apps", "models", "urls", "routing"},
}


def wings(app: str) -> list[str]:
    return sorted(
        p.name
        for p in (ROOT / app).iterdir()
        if (p / "__init__.py").exists() and p.name not in {"migrations", "management"}
    )


@pytest.mark.parametrize("app", sorted(APP_ROOTS))
def test_only_the_contract_and_djangos_places_sit_at_an_apps_root(app):
    modules = {p.stem for p in (ROOT / app).glob("*.py")}
    assert modules - APP_ROOTS[app] == set(), f"{app}/ holds modules outside any wing"


@pytest.mark.parametrize("app", sorted(APP_ROOTS))
def test_every_wing_is_in_the_architecture_page_and_the_readme(app):
    for wing in wings(app):
        assert re.search(rf"^\s+{wing}/", ARCHITECTURE, re.M), (
            f"docs/ARCHITECTURE.md misses {app}/{wing}/"
        )
        assert re.search(rf"\b{wing}/", README_LAYOUT), f"README's Layout misses {app}/{wing}/"


def test_every_module_the_architecture_page_names_exists():
    named = set(re.findall(r"`((?:providers|plugins_api|echo_site)/[\w/]+\.py)`", ARCHITECTURE))
    assert named, "the page names no module"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_every_wing_says_its_job_in_its_docstring():
    for app in APP_ROOTS:
        for wing in wings(app):
            docstring = ast.get_docstring(
                ast.parse((ROOT / app / wing / "__init__.py").read_text())
            )
            assert docstring, f"{app}/{wing}/__init__.py has no docstring"


def test_the_domain_never_imports_the_http_side():
    offenders = []
    for path in (ROOT / "providers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "plugins_api"
            ]
    assert offenders == []
