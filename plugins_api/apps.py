from __future__ import annotations

from django.apps import AppConfig


class PluginsApiConfig(AppConfig):
    name = "plugins_api"
    verbose_name = "Echo API"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from plugins_api import provider_push
        from providers.models import ProviderConfig

        # Connected after the providers app's own receivers (INSTALLED_APPS
        # order), so that on commit this process reloads before pages are told.
        post_save.connect(
            provider_push.provider_config_saved,
            sender=ProviderConfig,
            dispatch_uid="plugins_api.provider_push.saved",
        )
        post_delete.connect(
            provider_push.provider_config_deleted,
            sender=ProviderConfig,
            dispatch_uid="plugins_api.provider_push.deleted",
        )
