"""``issue_api_key``, ``revoke_api_key`` and ``bootstrap_local``: keys from the command line."""

from __future__ import annotations

import os
import stat
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from plugins_api.access.client_keys import forget_cached_keys, hash_key, verify_key
from plugins_api.models import ClientAPIKey


def run(*args: str, **options: object) -> tuple[str, str]:
    """Run a management command; return (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def no_cached_keys() -> None:
    """Start each test with no cached key verifications."""
    forget_cached_keys()


def test_issue_prints_the_key_alone_on_stdout(db) -> None:
    out, err = run("issue_api_key", "ci", scope="admin")

    assert out.endswith("\n") and out.count("\n") == 1
    raw_key = out.strip()
    assert raw_key.startswith("echo-")
    assert raw_key not in err
    row = ClientAPIKey.objects.get(name="ci")
    assert row.scope == "admin"
    assert row.key_hash == hash_key(raw_key)
    assert row.prefix in err
    identity = verify_key(raw_key)
    assert identity is not None and identity.scope == "admin"


def test_issue_defaults_to_chat_scope(db) -> None:
    out, _ = run("issue_api_key", "web")

    assert ClientAPIKey.objects.get(name="web").scope == "chat"
    assert verify_key(out.strip()) is not None


def test_issue_refuses_a_duplicate_name_and_keeps_the_first_key(db) -> None:
    first, _ = run("issue_api_key", "ci")

    with pytest.raises(CommandError, match="already exists"):
        run("issue_api_key", "ci", scope="admin")

    row = ClientAPIKey.objects.get(name="ci")
    assert (row.scope, row.key_hash) == ("chat", hash_key(first.strip()))


def test_issue_rejects_an_unknown_scope_on_the_command_line(db) -> None:
    with pytest.raises(CommandError, match="scope"):
        run("issue_api_key", "ci", "--scope", "root")
    assert not ClientAPIKey.objects.exists()


def test_revoke_stops_the_key(db) -> None:
    out, _ = run("issue_api_key", "ci")
    raw_key = out.strip()
    assert verify_key(raw_key) is not None

    revoked, _ = run("revoke_api_key", "ci")

    assert "ci" in revoked and raw_key not in revoked
    assert verify_key(raw_key) is None
    assert ClientAPIKey.objects.get(name="ci").revoked_at is not None


def test_revoke_an_unknown_key_is_a_command_error(db) -> None:
    with pytest.raises(CommandError, match="nobody"):
        run("revoke_api_key", "nobody")


@pytest.fixture
def var_dir(settings, tmp_path: Path) -> Path:
    """A private var/ for bootstrap_local."""
    settings.VAR_DIR = tmp_path / "var"
    settings.ECHO_ENV = "development"
    return settings.VAR_DIR


def mode(path: Path) -> int:
    """Return the permission bits of PATH."""
    return stat.S_IMODE(path.stat().st_mode)


def test_bootstrap_creates_admin_and_keys_under_var(db, var_dir: Path) -> None:
    out, err = run("bootstrap_local")

    chat_key = (var_dir / "keys" / "chat.key").read_text().strip()
    admin_key = (var_dir / "keys" / "admin.key").read_text().strip()
    password = (var_dir / "admin-password").read_text().strip()
    for path in ("keys/chat.key", "keys/admin.key", "admin-password"):
        assert mode(var_dir / path) == 0o600, path
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert get_user_model().objects.get(username="admin").is_superuser
    chat, admin = verify_key(chat_key), verify_key(admin_key)
    assert chat is not None and (chat.name, chat.scope) == ("local-chat", "chat")
    assert admin is not None and (admin.name, admin.scope) == ("local-admin", "admin")
    for secret in (chat_key, admin_key, password):
        assert secret not in out + err
    assert str(var_dir / "keys" / "chat.key") in out
    assert "/chat" in out and "Authorization: Bearer" in out


def test_bootstrap_files_are_private_from_the_moment_they_exist(
    db, var_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = var_dir / "keys" / "chat.key"
    stale.parent.mkdir(parents=True)
    stale.write_text("echo-stale\n")
    stale.chmod(0o644)
    # Not made private after the secret is written: a permissive umask and no
    # chmod afterwards still leave every file 0600.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    umask = os.umask(0)
    try:
        run("bootstrap_local")
    finally:
        os.umask(umask)

    for path in ("keys/chat.key", "keys/admin.key", "admin-password"):
        assert mode(var_dir / path) == 0o600, path
    assert stale.read_text().strip() != "echo-stale"


def test_bootstrap_second_run_keeps_the_same_keys(db, var_dir: Path) -> None:
    run("bootstrap_local")
    files = ("keys/chat.key", "keys/admin.key", "admin-password")
    before = {path: (var_dir / path).read_text() for path in files}
    hashes = set(ClientAPIKey.objects.values_list("key_hash", flat=True))

    out, _ = run("bootstrap_local")

    assert {path: (var_dir / path).read_text() for path in files} == before
    assert set(ClientAPIKey.objects.values_list("key_hash", flat=True)) == hashes
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert all(secret.strip() not in out for secret in before.values())


def test_bootstrap_replaces_a_key_whose_file_was_lost(db, var_dir: Path) -> None:
    run("bootstrap_local")
    old = (var_dir / "keys" / "chat.key").read_text().strip()
    (var_dir / "keys" / "chat.key").unlink()

    run("bootstrap_local")

    new = (var_dir / "keys" / "chat.key").read_text().strip()
    assert new != old
    assert verify_key(old) is None
    assert verify_key(new) is not None
    assert ClientAPIKey.objects.filter(name="local-chat").count() == 1


def test_bootstrap_refuses_to_run_in_production(db, var_dir: Path, settings) -> None:
    settings.ECHO_ENV = "production"

    with pytest.raises(CommandError, match="production"):
        run("bootstrap_local")

    assert not var_dir.exists()
    assert not get_user_model().objects.exists()
    assert not ClientAPIKey.objects.exists()
