from __future__ import annotations

from django.apps import AppConfig


class PluginsApiConfig(AppConfig):
    name = "plugins_api"
    verbose_name = "Echo API"

    def ready(self) -> None:
        from django.core import checks
        from django.db.models.signals import post_delete, post_save

        from echo_site.security_checks import check_browser_security

        checks.register(check_browser_security, checks.Tags.security, deploy=True)

        # A client key quoted anywhere (a URL in Django's "Not Found" line, a
        # client's request id) is masked like a provider's key.
        from plugins_api.access.client_keys import KEY_PREFIX, KEY_SHAPE
        from providers.secrets.masking import MASK, mask_by_shape

        mask_by_shape(KEY_PREFIX, KEY_SHAPE, KEY_PREFIX + MASK)

        # Chat pages learn of provider changes from this process's registry
        # (``registry.subscribe`` in the consumer), not from a signal here.
        # A revoked, deleted or re-scoped key's open chat sockets close in every worker.
        from plugins_api.chat import revoked_key_sockets as client_key_push
        from plugins_api.models import ClientAPIKey

        post_save.connect(
            client_key_push.client_key_saved,
            sender=ClientAPIKey,
            dispatch_uid="plugins_api.chat.revoked_key_sockets.saved",
        )
        post_delete.connect(
            client_key_push.client_key_deleted,
            sender=ClientAPIKey,
            dispatch_uid="plugins_api.chat.revoked_key_sockets.deleted",
        )
