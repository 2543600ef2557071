"""The provider runtime of this process: the registry of live providers, routing, retries, breakers, and keeping them equal to the database."""

from types import ModuleType

_process: ModuleType | None = None


def process_module() -> ModuleType:
    """Return ``providers.runtime.process``, imported on the first call.

    It imports the models and most of the runtime, so modules it imports (the
    model catalogue) and modules imported before Django is ready (log
    redaction) reach it through here; after the first call, at the cost of
    one global read, where an import statement in a function costs a lookup
    through the import machinery on every call (per request, per log record).
    """
    global _process
    if _process is None:
        from providers.runtime import process

        _process = process
    return _process
