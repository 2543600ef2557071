"""``manage.py bootstrap_local``: on a developer's machine, a login and keys to try Echo with.

On first run it creates the superuser ``admin`` and two client keys
(``local-admin``, ``local-chat``), writes them under ``var/`` (mode 0600,
never committed) and says where; later runs only repeat the instructions.
It refuses to run with ECHO_ENV=production.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from plugins_api.access.key_changes import client_key_issue
from plugins_api.models import ClientAPIKey

ADMIN_USERNAME = "admin"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 (and an existing file made so) before the secret is written,
    # so that it is never readable by others, not even for a moment.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(descriptor, 0o600)
        handle.write(text + "\n")


class Command(BaseCommand):
    help = "Create a local admin login and client keys under var/ (development only)."

    def handle(self, *args, **options):
        if settings.ECHO_ENV == "production":
            raise CommandError("bootstrap_local is for development; it will not run in production.")
        var = Path(settings.VAR_DIR)
        password_file = var / "admin-password"
        User = get_user_model()
        if not User.objects.filter(username=ADMIN_USERNAME).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(ADMIN_USERNAME, "", password)
            _write_private(password_file, password)
        for scope in ("admin", "chat"):
            name = f"local-{scope}"
            key_file = var / "keys" / f"{scope}.key"
            if not key_file.exists() or not ClientAPIKey.objects.filter(name=name).exists():
                ClientAPIKey.objects.filter(name=name).delete()
                _, raw_key = client_key_issue(name=name, scope=scope)
                _write_private(key_file, raw_key)
        base = f"http://{settings.HOST}:{settings.PORT}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"Echo is starting on {base}",
                    f"  Admin:     {base}/admin/  (user '{ADMIN_USERNAME}', password in {password_file})",
                    f"  Chat key:  {var / 'keys' / 'chat.key'}   Admin key: {var / 'keys' / 'admin.key'}",
                    "  Try:",
                    f'    curl -X POST {base}/chat -H "Authorization: Bearer $(cat {var / "keys" / "chat.key"})" \\',
                    "         -H 'Content-Type: application/json' -d '{\"prompt\": \"Hello\"}'",
                    "",
                ]
            )
        )
