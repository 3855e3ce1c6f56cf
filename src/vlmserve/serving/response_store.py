"""Stored responses (`/v1/responses` with `store`) in SQLite: each one with the conversation
it answered, so a later request can continue from it (`previous_response_id`).

Every row belongs to a tenant (the identity of the key that created it): reads and deletes
name the tenant too, so a response is visible only to the key that created it, and another
key's id looks exactly like an id that does not exist. The database is opened on first use
(a server that never stores creates no file); calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "responses.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,     -- the response object as answered (JSON)
    input TEXT NOT NULL         -- every input item it answered, earlier turns included (JSON)
)
"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / FILE_NAME
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads in turn

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            self._connection = connection
        return self._connection

    def _put(self, tenant: str, stored: StoredResponse) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (
                    stored.response["id"],
                    tenant,
                    time.time(),
                    json.dumps(stored.response),
                    json.dumps(stored.input_items),
                ),
            )

    def _get(self, tenant: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT response, input FROM responses WHERE id = ? AND tenant = ?",
                    (response_id, tenant),
                )
                .fetchone()
            )
        return None if row is None else StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def _delete(self, tenant: str, response_id: str) -> bool:
        with self._lock, self._connect() as db:
            cursor = db.execute(
                "DELETE FROM responses WHERE id = ? AND tenant = ?", (response_id, tenant)
            )
        return cursor.rowcount > 0

    async def put(self, tenant: str, stored: StoredResponse) -> None:
        await asyncio.to_thread(self._put, tenant, stored)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, tenant, response_id)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, tenant, response_id)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
