"""`RegistryStore`: the registered models in one SQLite file, so they survive a restart.

- WAL journal, `synchronous=FULL`, one transaction per change: a change answered to a client
  is on disk (a `kill -9` right after the answer loses nothing).
- The schema is versioned (`PRAGMA user_version`); `MIGRATIONS[v]` takes a file from version
  `v` to `v + 1`, each in its own transaction, when it is opened. A file from a newer
  vlmserve is refused rather than rewritten.
- A file that is not a readable registry (not SQLite, damaged, unreadable, a row that no
  longer passes the checks) is a `RegistryFileError` naming the file: never a silent reset.

Each method holds one lock and one transaction, and may be called from any thread (the
registry calls it from a worker thread, so a slow disk never stalls the event loop).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from vlmserve.multimodal.policy import MediaOverrides, PolicyError
from vlmserve.registry.errors import RegistryFileError, SpecConflict, SpecError
from vlmserve.registry.spec import ENGINE_SETTINGS, ModelSpec

IN_MEMORY = ":memory:"


def _create_models(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE models (
            alias TEXT PRIMARY KEY,
            model_name TEXT NOT NULL,
            settings TEXT NOT NULL,      -- JSON: the engine settings the registration gave
            max_waiting INTEGER,
            keep_alive REAL,             -- seconds; -1 never; NULL the server's default
            pinned INTEGER NOT NULL,
            revision INTEGER NOT NULL,   -- 1 at registration, +1 per change of the spec
            created_at REAL NOT NULL,    -- unix seconds
            updated_at REAL NOT NULL,
            memory_bytes INTEGER,        -- measured at its last load
            load_seconds REAL            -- measured at its last load
        )"""
    )


def _add_media(conn: sqlite3.Connection) -> None:
    # JSON: the media policy overrides (version 2); rows from version 1 override nothing.
    conn.execute("ALTER TABLE models ADD COLUMN media TEXT NOT NULL DEFAULT '{}'")


# MIGRATIONS[v] upgrades a file at schema version v to v + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_models, _add_media]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class StoredModel:
    spec: ModelSpec
    revision: int
    created_at: float
    updated_at: float
    memory_bytes: int | None = None
    load_seconds: float | None = None


class RegistryStore:
    def __init__(self, path: str | Path = IN_MEMORY) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if self.path != IN_MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every change opens its own transaction (see `_change`).
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._error(f"cannot be opened: {exc}") from exc
        try:
            self._open()
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(f"is not a readable vlmserve registry: {exc}") from exc
        except RegistryFileError:
            self._conn.close()
            raise

    def _error(self, problem: str) -> RegistryFileError:
        return RegistryFileError(
            f"registry file {self.path} {problem}. It is kept as it is: move it away to start "
            "with an empty registry, or pass --registry PATH"
        )

    def _open(self) -> None:
        conn = self._conn
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise self._error("is damaged (PRAGMA quick_check failed)")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != IN_MEMORY and mode != "wal":
            raise self._error(f"cannot use a write-ahead log (journal mode {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise self._error(
                f"has schema version {version}, newer than this vlmserve's {SCHEMA_VERSION} "
                "(written by a newer release)"
            )
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise self._error("is an SQLite database of something else (no registry schema)")
        for step in range(version, SCHEMA_VERSION):
            with self._change():
                MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {step + 1}")
        self.models()  # every row must read back now, not at the first request

    @contextlib.contextmanager
    def _change(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so two writers never interleave)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- reading ------------------------------------------------------------------------------
    _COLUMNS = (
        "alias, model_name, settings, max_waiting, keep_alive, pinned, revision, created_at, "
        "updated_at, memory_bytes, load_seconds, media"
    )

    def _row(self, row: tuple[object, ...]) -> StoredModel:
        alias = row[0]
        try:
            settings = json.loads(str(row[2]))
            if not isinstance(settings, dict) or set(settings) - set(ENGINE_SETTINGS):
                raise ValueError(f"unknown settings {sorted(set(settings) - set(ENGINE_SETTINGS))}")
            media = json.loads(str(row[11]))
            if not isinstance(media, dict):
                raise ValueError(f"media overrides are not an object: {media!r}")
            spec = ModelSpec(
                alias=str(alias),
                model_name=str(row[1]),
                max_waiting=row[3],  # type: ignore[arg-type]
                keep_alive=row[4],  # type: ignore[arg-type]
                pinned=bool(row[5]),
                media=MediaOverrides.from_dict(media),
                **settings,
            )
        except (ValueError, TypeError, SpecError, PolicyError) as exc:
            raise self._error(f"has a model {alias!r} this vlmserve cannot read: {exc}") from exc
        return StoredModel(spec, *row[6:11])  # type: ignore[arg-type]

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._COLUMNS} FROM models ORDER BY created_at, alias"
            ).fetchall()
        return [self._row(row) for row in rows]

    def get(self, alias: str) -> StoredModel | None:
        with self._lock:
            return self._get(alias)

    def _get(self, alias: str) -> StoredModel | None:
        row = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM models WHERE alias = ?", (alias,)
        ).fetchone()
        return None if row is None else self._row(row)

    # -- changes -------------------------------------------------------------------------------
    def register(self, spec: ModelSpec) -> tuple[StoredModel, bool]:
        """Add `spec`; True when added. The same spec again is no change (False); another
        spec under the same alias is a `SpecConflict`."""
        with self._lock, self._change():
            existing = self._get(spec.alias)
            if existing is not None:
                if existing.spec != spec:
                    raise SpecConflict(
                        spec.alias,
                        f"the model {spec.alias!r} is registered with another spec (revision "
                        f"{existing.revision}); change it with PUT /v1/models/{spec.alias} and "
                        "expected_revision",
                    )
                return existing, False
            now = time.time()
            stored = StoredModel(spec, 1, now, now)
            self._conn.execute(
                f"INSERT INTO models ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                self._values(stored),
            )
            return stored, True

    def replace(self, spec: ModelSpec, expected_revision: int | None) -> StoredModel:
        """Store `spec` in place of the alias's spec (added if `expected_revision` is None and
        the alias is new). A different spec takes the next revision; `expected_revision`, when
        given, must be the stored one (`SpecConflict` otherwise)."""
        with self._lock, self._change():
            existing = self._get(spec.alias)
            if existing is None:
                if expected_revision is not None:
                    raise SpecConflict(spec.alias, f"the model {spec.alias!r} is not registered")
                now = time.time()
                stored = StoredModel(spec, 1, now, now)
            else:
                if expected_revision is not None and expected_revision != existing.revision:
                    raise SpecConflict(
                        spec.alias,
                        f"expected_revision {expected_revision} is not the current revision "
                        f"of {spec.alias!r} ({existing.revision}): read it again and retry",
                    )
                if existing.spec == spec:
                    return existing
                stored = replace(
                    existing, spec=spec, revision=existing.revision + 1, updated_at=time.time()
                )
            self._conn.execute(
                f"INSERT OR REPLACE INTO models ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                self._values(stored),
            )
            return stored

    def delete(self, alias: str) -> bool:
        with self._lock, self._change():
            return self._conn.execute("DELETE FROM models WHERE alias = ?", (alias,)).rowcount > 0

    def record_load(self, alias: str, memory_bytes: int, load_seconds: float) -> None:
        """The footprint and load time measured at a load: the next start's estimates."""
        with self._lock, self._change():
            self._conn.execute(
                "UPDATE models SET memory_bytes = ?, load_seconds = ? WHERE alias = ?",
                (memory_bytes, load_seconds, alias),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def _values(stored: StoredModel) -> tuple[object, ...]:
        spec = stored.spec
        return (
            spec.alias,
            spec.model_name,
            json.dumps(spec.settings(), sort_keys=True),
            spec.max_waiting,
            spec.keep_alive,
            int(spec.pinned),
            stored.revision,
            stored.created_at,
            stored.updated_at,
            stored.memory_bytes,
            stored.load_seconds,
            json.dumps(spec.media.to_dict(), sort_keys=True),
        )
