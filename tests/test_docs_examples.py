"""The examples of ``docs/PLUGINS.md`` run, and its commands exist with the options shown.

Each ```python block runs in a fresh interpreter (Django set up, as in a
plugin's tests), offline. Each ``manage.py``/``utils/plugin_template.py``
line of a ```bash block names a real command, and every ``--option`` it uses
is one of that command's options.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PLUGINS_DOC = DOCS / "PLUGINS.md"
PREAMBLE = "import django\ndjango.setup()\n"


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def command_lines(path: Path) -> list[str]:
    """Return the management command lines of PATH's bash blocks, continuations joined."""
    lines = []
    for block in blocks(path, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            if "manage.py " in line or "utils/plugin_template.py" in line:
                lines.append(line)
    return lines


def test_the_doc_pages_exist() -> None:
    for page in ("PLUGINS.md", "CONFIGURATION.md", "API.md", "OPERATIONS.md"):
        assert (DOCS / page).is_file(), page


@pytest.mark.slow
@pytest.mark.parametrize(
    "code",
    blocks(PLUGINS_DOC, "python"),
    ids=lambda code: code.strip().splitlines()[0][:40],
)
def test_python_example_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "ECHO_ENV": "test", "DJANGO_SETTINGS_MODULE": "echo_site.settings"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", PREAMBLE + code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def command_examples() -> list[str]:
    return [line for page in sorted(DOCS.glob("*.md")) for line in command_lines(page)]


@pytest.mark.parametrize("line", command_examples())
def test_command_example_names_real_options(line: str) -> None:
    words = shlex.split(line, comments=True)
    if "utils/plugin_template.py" in line:
        name, args = "startprovider", words[words.index("utils/plugin_template.py") + 1 :]
        assert (ROOT / "utils" / "plugin_template.py").is_file()
    else:
        at = next(i for i, w in enumerate(words) if w.endswith("manage.py"))
        name, args = words[at + 1], words[at + 2 :]
    commands = get_commands()
    assert name in commands, f"no management command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    known = {option for action in parser._actions for option in action.option_strings}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"{name} has no option {arg}"
