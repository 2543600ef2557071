"""Fixtures shared by the client-key tests."""

from __future__ import annotations

import pytest

from plugins_api.access import client_keys


@pytest.fixture
def counted_queries(monkeypatch) -> list[str]:
    """The digests the database was asked for, one entry per query."""
    asked: list[str] = []
    real = client_keys.stored_key_row

    async def counting(digest: str):
        asked.append(digest)
        return await real(digest)

    monkeypatch.setattr(client_keys, "stored_key_row", counting)
    return asked
