from __future__ import annotations

from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "AI providers"

    def ready(self) -> None:
        from django.core import checks
        from django.db.models.signals import post_delete, post_save

        from providers.config import commit_signals as signals
        from providers.config import system_checks
        from providers.models import ProviderConfig
        from providers.runtime import process as runtime
        from providers.secrets.log_redaction import install_log_redaction

        runtime.current()  # this process's runtime, built once, with the built-in plugins
        # Every log record of the process, not only Echo's handlers', loses live secrets.
        install_log_redaction()
        post_save.connect(
            signals.provider_config_saved,
            sender=ProviderConfig,
            dispatch_uid="providers.provider_config_saved",
        )
        post_delete.connect(
            signals.provider_config_deleted,
            sender=ProviderConfig,
            dispatch_uid="providers.provider_config_deleted",
        )
        checks.register(system_checks.check_provider_yaml, "providers")
