"""The built-in echo provider passes the conformance kit (no upstream, so no fault tests)."""

from __future__ import annotations

from providers.plugins.echo_provider import EchoProvider
from providers.testing.conformance import ProviderConformance


class TestEchoConformance(ProviderConformance):
    plugin_class = EchoProvider
    fake_class = None
