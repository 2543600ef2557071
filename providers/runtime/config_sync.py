"""Keep what this worker serves equal to the database, provider by provider, by revision.

The database is the source of truth; every saved change raises the row's
``revision``. Each worker remembers, per provider, the revision and content
digest it last applied (``served_revision``). Three paths bring a worker in
step, and all of them go through ``sync_provider``:

- the saving worker, after its transaction commits (``after_commit``, run by
  the ``on_commit`` hook of ``providers.config.commit_signals``), which then publishes
  ``(name, revision)`` to the other workers;
- every worker, on such a message (``handle_message``, called by the
  broadcast listener); a message whose revision is not newer than the one
  served, and not forced, is dropped without touching the database;
- every worker, on the repair pass (``repair_all``): every few seconds and
  after every (re)subscription of the listener, one query compares each row's
  (revision, digest) with what is served, so lost messages, SQL updates and
  restores to an older revision converge on their own.

Why a late or duplicate message cannot apply an older configuration over a
newer one: ``sync_provider`` reads the row *inside* a per-provider lock and
applies what it read before releasing it. Applications of one provider are
therefore serialised in the order of their reads, and a later read sees every
commit that finished before it started. The last application is always of the
freshest read, and any commit is followed by at least one read that sees it
(its own ``after_commit``, or the repair pass). The message only says "look";
its content is never applied.

Each row read also tells which providers are configured and enabled
(``enabled_providers``): the public ``/health`` reads that set, kept current
by the same three paths, instead of querying the database on every probe.
It also hands the provider's ``routing_priority`` to the model catalogue.

Model groups (``ModelGroup`` rows) follow the same three paths as one
table: ``model_groups_after_commit`` applies the committed groups here and
publishes ``GROUPS_MESSAGE_NAME`` (a name no provider can have); on that
message, on the repair pass, and on this worker's first provider sync (its
start-up), ``sync_model_groups`` reads every enabled group in one query,
under one lock, and replaces the manager's group table when the rows'
digest differs from the one served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from providers.runtime import broadcast
from providers.runtime import process as runtime
from providers.runtime.manager import OutOfService
from providers.secrets.masking import redact

logger = logging.getLogger(__name__)

# How long the saving request waits for its own worker to apply the change.
# Past it the change still applies in the background (in lock order) and the
# other workers are told at once; the request is never failed for it.
APPLY_WAIT_SECONDS = 30.0
#: The broadcast name that says "the model groups changed" (a provider name cannot hold ':').
GROUPS_MESSAGE_NAME = "model-groups:"


@dataclass(frozen=True, slots=True)
class Served:
    """What this worker last applied for one provider."""

    revision: int
    digest: str
    # Whether the registry should hold a live instance: True when the row asked
    # to serve and it loaded, False when it must not serve, None when the load
    # failed (the previous instance, if any, may still be serving).
    live: bool | None
    error: str | None


class _ProviderLocks:
    """One asyncio lock per provider name, kept only while someone holds or awaits it.

    An entry lives from the first waiter to the last, so the map never holds
    more names than there are syncs in progress.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]

    def __len__(self) -> int:
        return len(self._locks)


class ConfigSyncState:
    """What one runtime serves, per provider, and the per-provider locks its syncs take.

    ``enabled`` holds the names of the providers whose row, as this worker last
    read it, asks to serve (``enabled``), whether or not they loaded: a row
    whose secrets cannot be decrypted is in it. ``read_all`` says whether a
    repair pass has read every row, so that ``enabled`` is the database's.
    """

    def __init__(self) -> None:
        self.served: dict[str, Served] = {}
        self.locks = _ProviderLocks()
        self.enabled: set[str] = set()
        self.read_all = False
        # The digest of the model group rows served (None: none read yet), and the lock of their syncs.
        self.groups_digest: str | None = None
        self.groups_lock = asyncio.Lock()

    def forget_all(self) -> None:
        """Forget what this worker serves (its registry was emptied: a shutdown)."""
        self.served.clear()
        self.enabled.clear()
        self.read_all = False
        self.groups_digest = None


def _state() -> ConfigSyncState:
    return runtime.current().config_sync_state


def served_revision(name: str) -> int | None:
    """Return the revision of provider NAME this worker serves, None if it serves none."""
    served = _state().served.get(name)
    return served.revision if served is not None else None


def enabled_providers() -> frozenset[str] | None:
    """Return the names of the providers configured and enabled, as this worker last read them.

    Kept current by every sync (this worker's saves, the other workers'
    messages, the repair pass), so that it costs no query. None while this
    worker has not read every row yet: neither its start-up (which loads
    every row) nor a repair pass has finished.
    """
    state = _state()
    if not (state.read_all or runtime.current().lifecycle.started):
        return None
    return frozenset(state.enabled)


def config_digest(row: Any) -> str:
    """Return a digest of everything in ROW (a ProviderConfig) that what is served depends on."""
    content = {
        "plugin": row.plugin,
        "enabled": row.enabled,
        "is_default": row.is_default,
        "fallbacks": row.fallbacks,
        "settings": row.settings,
        "secrets_encrypted": row.secrets_encrypted,
        "disabled_reason": row.disabled_reason,
        "routing_priority": row.routing_priority,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _in_step(name: str, served: Served | None, revision: int, digest: str) -> bool:
    """Return whether SERVED is the row (REVISION, DIGEST) and the registry agrees."""
    if served is None or (served.revision, served.digest) != (revision, digest):
        return False
    # A registry emptied or changed behind our back (a shutdown, a test, a plugin
    # rediscovered) is out of step even when the revision matches.
    return served.live is None or (name in runtime.registry) == served.live


async def sync_provider(name: str, *, force: bool = False) -> str | None:
    """Bring provider NAME in line with its row; return its load error, or None.

    Under NAME's lock: read the row, and apply it when its (revision, digest)
    differs from what is served, or always when FORCE (a new instance from
    the same row). A row that is gone takes the provider out of service.
    Never raises: a failure is logged and left to the repair pass.
    """
    from providers.models import ProviderConfig

    try:
        async with _state().locks.hold(name):
            row = await ProviderConfig.objects.filter(name=name).afirst()
            error = await _apply_row(name, row, force=force)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception(
            "provider %s could not be brought in line with the database; the repair pass retries",
            name,
        )
        return f"Configuration not applied: {type(exc).__name__}."
    if _state().groups_digest is None:
        # This worker's first sync (its start-up loads every provider this way):
        # the groups come with the providers, not a repair interval later.
        await sync_model_groups()
    return error


async def _apply_row(name: str, row: Any, *, force: bool) -> str | None:
    """Apply ROW (read under NAME's lock) unless it is what is served already."""
    state = _state()
    served_configs = state.served
    served = served_configs.get(name)
    # Before anything can fail: the row read is the news, whether or not it loads.
    if row is not None and row.enabled:
        state.enabled.add(name)
    else:
        state.enabled.discard(name)
    runtime.manager.catalogue.set_priority(
        name, row.routing_priority if row is not None and row.enabled else None
    )
    if row is None:
        served_configs.pop(name, None)
        runtime.manager.out_of_service.pop(name, None)
        if served is not None or name in runtime.registry:
            await runtime.apply_config_state(name, None, "")
        return None
    digest = config_digest(row)
    if not force and _in_step(name, served, row.revision, digest):
        return served.error if served is not None else None
    spec, reason = row.serving_spec()
    error = await runtime.apply_config_state(name, spec, reason)
    if spec is None:
        live: bool | None = False
    else:
        live = True if error is None else None
    # Why a configured provider does not serve, for the calls that name it (a 409, not a 404).
    why = reason if spec is None else error
    if why and spec is not None:  # a plugin's own words may hold any of its settings
        why = redact(why, [v for v in spec.config.values() if isinstance(v, str)])
    if why:
        runtime.manager.out_of_service[name] = OutOfService(
            row.plugin, why if len(why) <= 300 else why[:297] + "..."
        )
    else:
        runtime.manager.out_of_service.pop(name, None)
    served_configs[name] = Served(row.revision, digest, live, error)
    return error


async def handle_message(message: Mapping[str, Any]) -> None:
    """Act on a broadcast ``(name, revision, force)``: sync NAME unless it is not news."""
    name = message.get("name")
    if not isinstance(name, str) or not name:
        return
    if name == GROUPS_MESSAGE_NAME:
        await sync_model_groups()
        return
    revision = message.get("revision")
    force = message.get("force") is True
    if not force and isinstance(revision, int):
        served = served_revision(name)
        if served is not None and revision <= served:
            return
    await sync_provider(name, force=force)


async def repair_all() -> None:
    """Sync every provider whose row differs from what is served; drop those whose row is gone.

    One query reads every row; only a provider out of step is read again,
    under its lock, and applied. Never raises.
    """
    from providers.models import ProviderConfig

    try:
        rows = [row async for row in ProviderConfig.objects.all()]
    except Exception:
        logger.exception("repair pass: the provider configurations could not be read")
        return
    served = _state().served
    in_database = set()
    for row in rows:
        in_database.add(row.name)
        if not _in_step(row.name, served.get(row.name), row.revision, config_digest(row)):
            logger.info("repair pass: provider %s differs from the database; applying", row.name)
            await sync_provider(row.name)
    for name in sorted(set(served) - in_database):
        logger.info("repair pass: provider %s is no longer configured; removing", name)
        await sync_provider(name)
    # A name read enabled whose apply failed before it was served, and whose row is gone since.
    state = _state()
    for name in sorted(state.enabled - in_database):
        await sync_provider(name)
    state.read_all = True
    await sync_model_groups()


async def repair_forever(interval: float) -> None:
    """Run ``repair_all`` every INTERVAL seconds until cancelled."""
    from providers.health.monitor import release_connections

    while True:
        await asyncio.sleep(interval)
        await repair_all()
        try:
            # A loop with no request cycle must close broken or aged connections itself.
            await sync_to_async(release_connections)()
        except Exception:
            logger.exception("repair pass: could not release its database connections")


def _serving_here() -> bool:
    loop = runtime.serving_loop()
    return loop is not None and loop.is_running() and not loop.is_closed()


def after_commit(name: str) -> None:
    """Apply the committed change of provider NAME here, then tell every other worker.

    Called once the transaction that saved or deleted the row has committed.
    A serving worker applies it through ``sync_provider`` on its serving loop
    before the response leaves. A process that serves nothing (a management
    command) starts no provider for it, but keeps in step one it already
    loaded; either way it publishes. Every failure is logged and left to
    the repair pass: the change has committed, the request must not fail.
    """
    revision: int | None = None
    try:
        if _serving_here() or name in _state().served:
            # Read here, in the thread that committed: the serving loop then needs
            # no database thread, which this caller may be holding (asgiref runs
            # every thread-sensitive call of a context on one thread).
            row = _committed_row(name)
            runtime.run_in_serving_loop(apply_committed_row, name, row, timeout=APPLY_WAIT_SECONDS)
            revision = served_revision(name)
        else:
            revision = _database_revision(name)
    except Exception:
        logger.exception(
            "provider %s: the committed change was not applied here; the repair pass will", name
        )
    try:
        broadcast.publish_provider_changed(name, revision)
    except Exception:
        logger.exception("provider %s: the change could not be broadcast", name)


def _committed_row(name: str) -> Any:
    from providers.models import ProviderConfig

    return ProviderConfig.objects.filter(name=name).first()


async def apply_committed_row(name: str, row: Any, *, force: bool = False) -> str | None:
    """Apply ROW, read by the committing thread outside NAME's lock, unless it is older.

    A row read outside the lock may be overtaken by a newer one that the
    listener applied meanwhile: a lower revision than the one served is
    dropped (only the repair pass, which reads under the lock, may go back
    to an older revision: a restore). Never raises.
    """
    try:
        async with _state().locks.hold(name):
            served = _state().served.get(name)
            if row is not None and served is not None and row.revision < served.revision:
                return served.error
            return await _apply_row(name, row, force=force)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception("provider %s: the committed change was not applied here", name)
        return f"Configuration not applied: {type(exc).__name__}."


def _database_revision(name: str) -> int | None:
    from providers.models import ProviderConfig

    return ProviderConfig.objects.filter(name=name).values_list("revision", flat=True).first()


def request_reload_everywhere(name: str) -> str | None:
    """Rebuild provider NAME from the database here and in every worker; return the local error.

    Here: a forced ``sync_provider`` (a new instance even from the same row).
    Elsewhere: a forced message, on which each worker re-reads the database.
    """
    try:
        row = _committed_row(name)
        error = runtime.run_in_serving_loop(_force_apply, name, row, timeout=APPLY_WAIT_SECONDS)
    except TimeoutError:
        logger.warning("provider %s: the reload goes on in the background", name)
        error = "The reload did not finish in time; it goes on in the background."
    except Exception:
        logger.exception("provider %s could not be reloaded here", name)
        error = "The reload failed here; the repair pass retries."
    try:
        broadcast.publish_provider_changed(name, served_revision(name), force=True)
    except Exception:
        logger.exception("provider %s: the reload could not be broadcast", name)
    return error


async def _force_apply(name: str, row: Any) -> str | None:
    return await apply_committed_row(name, row, force=True)


# --- model groups ---------------------------------------------------------------


def model_groups_digest(rows: list[Any]) -> str:
    """Return a digest of the enabled model group ROWS: what the group table depends on."""
    content = [
        [row.name, row.revision, row.strategy, row.deployments]
        for row in sorted(rows, key=lambda r: r.name)
    ]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def apply_model_group_rows(rows: list[Any]) -> bool:
    """Serve the enabled model group ROWS here unless they are what is served; return whether applied.

    Memory only (no database, no provider): safe from any thread.
    """
    from providers.runtime.model_groups import ModelGroupSpec

    state = _state()
    digest = model_groups_digest(rows)
    if digest == state.groups_digest:
        return False
    runtime.manager.groups.replace(ModelGroupSpec.from_row(row) for row in rows)
    state.groups_digest = digest
    logger.info("model groups: serving %d group(s)", len(rows))
    return True


async def sync_model_groups() -> None:
    """Read every enabled model group (one query) and serve them if they changed. Never raises."""
    from providers.models import ModelGroup

    try:
        async with _state().groups_lock:
            rows = [row async for row in ModelGroup.objects.filter(enabled=True)]
            apply_model_group_rows(rows)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("model groups could not be read; the repair pass retries")


async def _apply_group_rows_locked(rows: list[Any]) -> None:
    async with _state().groups_lock:
        apply_model_group_rows(rows)


def _committed_group_rows() -> list[Any]:
    from providers.models import ModelGroup

    return list(ModelGroup.objects.filter(enabled=True))


def model_groups_after_commit() -> None:
    """Serve the committed model groups here, then tell every other worker.

    Called once the transaction that saved or deleted a group has committed
    (``providers.config.services`` schedules it). The rows are read here, in
    the committing thread; a serving worker applies them on its serving loop,
    under the groups' lock. The message also reaches this worker, which then
    reads the rows again under the lock: a read overtaken by another commit
    is corrected at once, and the repair pass backs both up. Never raises.
    """
    try:
        rows = _committed_group_rows()
        if _serving_here():
            runtime.run_in_serving_loop(_apply_group_rows_locked, rows, timeout=APPLY_WAIT_SECONDS)
        else:
            apply_model_group_rows(rows)
    except Exception:
        logger.exception(
            "model groups: the committed change was not applied here; the repair pass will"
        )
    try:
        broadcast.publish_provider_changed(GROUPS_MESSAGE_NAME, None)
    except Exception:
        logger.exception("model groups: the change could not be broadcast")
