"""Generate a new provider plugin: its module, conformance test, config example and doc.

``manage.py startprovider`` and the guide's ``python utils/plugin_template.py``
both call ``generate_plugin``. The text of the generated files lives in
``providers/authoring/templates/*.tmpl`` (``string.Template`` with ``$name``
fields, so that the braces of Python and YAML need no escaping); this
module only checks the options, fills the templates in and writes the files,
refusing to overwrite any of them.

A generated provider for an existing wire format (``openai``, ``anthropic``,
``ollama``) subclasses that built-in provider and only changes its identity
and defaults, so it works as generated. ``blank`` is a skeleton on
``HTTPProvider`` whose generated test is expected to fail until the marked
methods are written.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from providers.plugins import BUILTIN_PLUGINS
from providers.runtime.registry import PLUGIN_FILE_SUFFIX, plugin_class_name

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

# The leading letter keeps the module name importable; '-' is accepted because
# the guide's own example is "custom-ai", and becomes '_' in file and plugin names.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")
MAX_NAME_LENGTH = 40

#: The wire formats a generated provider can start from, and what each reuses.
WIRES: dict[str, dict[str, str]] = {
    "openai": {
        "base_module": "providers.plugins.openai_provider",
        "base_class": "OpenAIProvider",
        "fake_module": "providers.testing.fake_openai",
        "fake_class": "FakeOpenAI",
    },
    "anthropic": {
        "base_module": "providers.plugins.anthropic_provider",
        "base_class": "AnthropicProvider",
        "fake_module": "providers.testing.fake_anthropic",
        "fake_class": "FakeAnthropic",
    },
    "ollama": {
        "base_module": "providers.plugins.ollama_provider",
        "base_class": "OllamaProvider",
        "fake_module": "providers.testing.fake_ollama",
        "fake_class": "FakeOllama",
    },
    "blank": {
        "base_module": "providers.http_provider",
        "base_class": "HTTPProvider",
        # A stand-in until the author writes a fake of their own API.
        "fake_module": "providers.testing.fake_openai",
        "fake_class": "FakeOpenAI",
    },
}

# How each generated test configures the plugin to reach its fake upstream.
# The fakes refuse a model they do not serve, so each test asks for one they
# do instead of the plugin's default; Ollama takes no key.
FAKE_CONFIGS: dict[str, str] = {
    "openai": '{"base_url": fake.base_url, "api_key": self.secret, "default_model": "gpt-4o-mini"}',
    "anthropic": "{\n"
    '            "base_url": fake.base_url,\n'
    '            "api_key": self.secret,\n'
    '            "default_model": "claude-3-5-haiku-latest",\n'
    "        }",
    "ollama": '{"base_url": fake.base_url, "default_model": "llama3"}',
    "blank": '{"base_url": fake.base_url, "api_key": self.secret, "default_model": "gpt-4o-mini"}',
}


class PluginSpecError(ValueError):
    """An option of the generator is invalid; FIELD names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"--{field}: {message}")
        self.field = field


class PluginExistsError(FileExistsError):
    """A file the generator would write already exists; nothing was written."""

    def __init__(self, paths: list[Path]) -> None:
        listed = ", ".join(str(p) for p in paths)
        super().__init__(f"Refusing to overwrite existing files: {listed}. Nothing was written.")
        self.paths = paths


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """What to generate: the checked options of the generator."""

    name: str
    display: str
    url: str
    model: str
    wire: str = "openai"

    @property
    def plugin(self) -> str:
        """Return the plugin name (and module stem): NAME with '-' as '_'."""
        return self.name.replace("-", "_")

    @property
    def class_name(self) -> str:
        return plugin_class_name(self.plugin)

    @property
    def env_prefix(self) -> str:
        return self.plugin.upper()


@dataclass(frozen=True, slots=True)
class GeneratedFiles:
    """Where the generator wrote each file."""

    provider: Path
    test: Path
    config: Path
    doc: Path

    def all(self) -> list[Path]:
        return [self.provider, self.test, self.config, self.doc]


def plugin_spec(
    *, name: str, display: str, url: str, model: str, wire: str = "openai"
) -> PluginSpec:
    """Return the options as a ``PluginSpec``; raise ``PluginSpecError`` naming a bad one."""
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise PluginSpecError(
            "name",
            f"{name!r} is not a valid plugin name: use lowercase letters and digits, "
            "starting with a letter, with single '-' or '_' between words (e.g. custom-ai).",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise PluginSpecError("name", f"use at most {MAX_NAME_LENGTH} characters.")
    plugin = name.replace("-", "_")
    if plugin in BUILTIN_PLUGINS:
        raise PluginSpecError(
            "name", f"{plugin!r} is a built-in provider; pick another name (e.g. my_{plugin})."
        )
    if keyword.iskeyword(plugin):
        raise PluginSpecError("name", f"{plugin!r} is a Python keyword.")
    display = display.strip()
    if not display or "\n" in display:
        raise PluginSpecError("display", "give a one-line display name, e.g. 'Custom AI'.")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PluginSpecError(
            "url", f"{url!r} is not an http(s) URL, e.g. https://api.example.com/v1."
        )
    if parts.username or parts.password:
        raise PluginSpecError("url", "must not carry credentials; the key goes in api_key.")
    model = model.strip()
    if not model or any(c.isspace() for c in model):
        raise PluginSpecError("model", "give one model name without spaces, e.g. custom-model-v1.")
    if wire not in WIRES:
        raise PluginSpecError("wire", f"must be one of: {', '.join(WIRES)}.")
    return PluginSpec(name=name, display=display, url=url, model=model, wire=wire)


def planned_files(spec: PluginSpec, plugins_dir: Path) -> GeneratedFiles:
    """Return where the files of SPEC go under PLUGINS_DIR.

    Only the provider module sits in the directory itself, where discovery
    looks; the test, config example and doc go in subdirectories, which
    discovery does not scan.
    """
    plugins_dir = Path(plugins_dir)
    return GeneratedFiles(
        provider=plugins_dir / f"{spec.plugin}{PLUGIN_FILE_SUFFIX}",
        test=plugins_dir / "tests" / f"test_{spec.plugin}{PLUGIN_FILE_SUFFIX}",
        config=plugins_dir / "config" / f"{spec.plugin}.example.yaml",
        doc=plugins_dir / "docs" / f"{spec.plugin}.md",
    )


def render(template: str, spec: PluginSpec) -> str:
    """Return the template file TEMPLATE filled in for SPEC."""
    wire = WIRES[spec.wire]
    values = {
        "name": spec.name,
        "plugin": spec.plugin,
        "class_name": spec.class_name,
        "display": spec.display,
        "display_repr": json.dumps(spec.display),
        "display_yaml": json.dumps(spec.display),
        "url": spec.url,
        "url_repr": json.dumps(spec.url),
        "model": spec.model,
        "model_repr": json.dumps(spec.model),
        "wire": spec.wire,
        "env_prefix": spec.env_prefix,
        "base_module": wire["base_module"],
        "base_class": wire["base_class"],
        "fake_module": wire["fake_module"],
        "fake_class": wire["fake_class"],
        "fake_config": FAKE_CONFIGS[spec.wire],
    }
    text = (TEMPLATE_DIR / template).read_text(encoding="utf-8")
    return Template(text).substitute(values)


def generate_plugin(spec: PluginSpec, plugins_dir: Path | str) -> GeneratedFiles:
    """Write the provider module, test, config example and doc of SPEC under PLUGINS_DIR.

    Raise ``PluginExistsError`` (and write nothing) when any of them exists.
    """
    files = planned_files(spec, Path(plugins_dir))
    existing = [path for path in files.all() if path.exists()]
    if existing:
        raise PluginExistsError(existing)
    # Render everything before writing anything: a template error leaves no half plugin.
    contents = {
        files.provider: render(f"provider_{spec.wire}.py.tmpl", spec),
        files.test: render(
            "test_blank.py.tmpl" if spec.wire == "blank" else "test_provider.py.tmpl", spec
        ),
        files.config: render(
            f"config_{'keyless' if spec.wire == 'ollama' else 'keyed'}.yaml.tmpl", spec
        ),
        files.doc: render("doc.md.tmpl", spec),
    }
    for path, text in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x" mode: a file created between the check above and now is still not overwritten.
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    return files
