"""Error reports (Django's debug page, the admins' error e-mails) that never show a secret.

Django's ``SafeExceptionReporterFilter`` hides settings by name, and local
variables and POST fields only where a view is decorated, and only with
DEBUG off. Echo's development server runs with DEBUG on when asked to, and
its secrets live in variables named anything (``config``, ``spec``,
``token``): so here the filter is always active, hides variables, POST
fields and nested keys whose names look secret, and the reporter redacts
every 8-character run of a provider secret (``providers.secrets.masking.redact``)
from the finished page, whatever part of it the secret came through.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from django.http import HttpRequest
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from providers.secrets.masking import redact

# Django's names, and Echo's: provider keys, encryption keys, URLs that carry a password.
HIDDEN_NAMES = re.compile(
    "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|CREDENTIAL|PRIVATE|ENCRYPT"
    "|REDIS_URL|DATABASE_URL|SESSION",
    flags=re.I,
)


def known_secrets() -> list[str]:
    """Return every provider secret this process knows: the live ones and the stored ones.

    The stored ones are read from the database; when that fails (the error
    being reported may be the database's), the live ones still count.
    """
    from providers.secrets.log_redaction import live_secret_values
    from providers.secrets.values import config_secret_values

    values = list(live_secret_values())
    try:
        from providers.models import ProviderConfig

        for config in ProviderConfig.objects.all():
            stored = config.readable_secrets() or {}
            values.extend(config_secret_values(stored, stored))
    except Exception:  # no database, or an async context: report with what is known
        pass
    return values


class _Shown(str):
    """A cleansed value's text, shown as is (its repr is itself)."""

    def __repr__(self) -> str:
        return str(self)


class EchoExceptionReporterFilter(SafeExceptionReporterFilter):
    """Hide secrets by name everywhere, DEBUG or not."""

    hidden_settings = HIDDEN_NAMES

    def is_active(self, request: HttpRequest | None) -> bool:
        """Return True: development pages must not show secrets either."""
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        """Return the POST fields with those named like a secret hidden."""
        parameters = super().get_post_parameters(request)
        if not parameters:
            return parameters
        cleansed = parameters.copy()
        for name in cleansed:
            if self.hidden_settings.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        """Cleanse VALUE as Django does, looking inside dataclasses too.

        A ``ProviderSpec`` passed along (``run_in_serving_loop(apply, spec)``)
        carries a provider's whole config, a key being tried included.
        """
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if isinstance(key, str) and self.hidden_settings.search(key):
                return self.cleansed_substitute
            fields = ", ".join(
                f"{f.name}={self.cleanse_setting(f.name, getattr(value, f.name, None))!r}"
                for f in dataclasses.fields(value)
            )
            return _Shown(f"{type(value).__name__}({fields})")
        return super().cleanse_setting(key, value)

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        """Return the frame's variables, those named like a secret (or holding one by name) hidden."""
        return [
            (name, self.cleanse_setting(name, value))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]


class EchoExceptionReporter(ExceptionReporter):
    """Render Django's error report, then redact every provider secret it still holds."""

    def get_traceback_html(self) -> str:
        return redact(super().get_traceback_html(), known_secrets())

    def get_traceback_text(self) -> str:
        return redact(super().get_traceback_text(), known_secrets())
