"""Write deploy/.env from deploy/.env.example with fresh secrets, unless it exists.

``python3 deploy/new_env.py`` fills ``SECRET_KEY``, ``ECHO_ENCRYPTION_KEYS``
(a Fernet key) and ``POSTGRES_PASSWORD`` with new random values and keeps
every other line as the example has it. Standard library only, so it runs
on the host before anything is built. Keep the file: a lost
``ECHO_ENCRYPTION_KEYS`` makes the stored provider keys unreadable.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fresh_secrets() -> dict[str, str]:
    """Return new values for the variables the example leaves empty."""
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        # A Fernet key: 32 random bytes, url-safe base64.
        "ECHO_ENCRYPTION_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        # Hex: it goes into DATABASE_URL unescaped.
        "POSTGRES_PASSWORD": secrets.token_hex(24),
    }


def render(example: str, values: dict[str, str]) -> str:
    """Return EXAMPLE with each empty ``NAME=`` line of VALUES filled in."""
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and name in values and value == "":
            line = f"{name}={values[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(target: Path) -> int:
    """Write TARGET from the example (mode 0600); refuse to overwrite it."""
    if target.exists():
        print(f"{target} exists; delete it first to start over (its keys decrypt your data).")
        return 1
    text = render((HERE / ".env.example").read_text(), fresh_secrets())
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / ".env"))
