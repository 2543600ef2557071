"""``manage.py rotate_encryption_keys``: re-encrypt every provider's secrets under the first key.

Rotate a key: put the new key first in ECHO_ENCRYPTION_KEYS (keep the old
one after it), restart, run this command, then remove the old key.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import F

from providers.models import ProviderConfig
from providers.secrets.box import SecretDecryptionError, reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every provider's secrets under the first key of ECHO_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        failed = []
        count = 0
        with transaction.atomic():
            for row in ProviderConfig.objects.select_for_update().exclude(secrets_encrypted=""):
                try:
                    token = reencrypt(row.secrets_encrypted)
                except SecretDecryptionError:
                    failed.append(row.name)
                    continue
                # update(), not save(): nothing about the provider changed, so no
                # audit entry is due. The new revision is what the row now holds:
                # each worker's repair pass rebuilds the provider once, same key.
                ProviderConfig.objects.filter(pk=row.pk).update(
                    secrets_encrypted=token, revision=F("revision") + 1
                )
                count += 1
            if failed:
                raise CommandError(
                    "No key in ECHO_ENCRYPTION_KEYS decrypts the secrets of: "
                    + ", ".join(failed)
                    + ". Nothing was changed; add the missing key and run again."
                )
        self.stdout.write(f"Re-encrypted the secrets of {count} provider(s) under the first key.")
