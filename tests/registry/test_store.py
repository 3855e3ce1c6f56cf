"""The SQLite store: durable registrations with revisions, WAL, versioned schema with
migrations, and files it cannot read refused by name (never reset)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vlmserve.multimodal.policy import MediaOverrides
from vlmserve.registry import ModelSpec, RegistryFileError, RegistryStore, SpecConflict
from vlmserve.registry import store as store_module

SPEC = ModelSpec("a", "/models/a", max_model_len=512, limit_mm_per_prompt={"image": 2})


def test_registrations_survive_reopening_with_their_revisions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "registry.db"
    store = RegistryStore(path)
    stored, created = store.register(SPEC)
    assert created and stored.revision == 1
    assert store.register(SPEC) == (stored, False)  # the same spec again: no change
    with pytest.raises(SpecConflict, match="registered with another spec"):
        store.register(ModelSpec("a", "/models/other"))
    store.record_load("a", 123, 0.5)
    changed = store.replace(ModelSpec("a", "/models/a2", keep_alive=-1), expected_revision=1)
    assert changed.revision == 2 and changed.memory_bytes == 123
    with pytest.raises(SpecConflict, match="expected_revision 1 is not the current"):
        store.replace(SPEC, expected_revision=1)
    store.register(ModelSpec("b", "/models/b", pinned=True))
    store.close()

    reopened = RegistryStore(path)
    models = {m.spec.alias: m for m in reopened.models()}
    assert models["a"].spec == ModelSpec("a", "/models/a2", keep_alive=-1)
    assert (models["a"].revision, models["a"].load_seconds) == (2, 0.5)
    assert models["b"].spec.pinned
    assert reopened.delete("b") and not reopened.delete("b")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION


def test_replace_without_a_revision_adds_or_updates(tmp_path: Path) -> None:
    store = RegistryStore()
    assert store.replace(SPEC, None).revision == 1
    assert store.replace(SPEC, None).revision == 1  # unchanged
    assert store.replace(ModelSpec("a", "/models/b"), None).revision == 2
    with pytest.raises(SpecConflict, match="not registered"):
        store.replace(ModelSpec("new", "/m"), expected_revision=1)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"this is not a database" * 100, "is not a readable vlmserve registry"),
        (b"SQLite format 3\x00" + b"\xff" * 200, "is not a readable vlmserve registry"),
    ],
    ids=["text", "damaged-header"],
)
def test_a_file_that_is_not_a_registry_is_refused_by_name(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(content)
    with pytest.raises(RegistryFileError) as raised:
        RegistryStore(path)
    message = str(raised.value)
    assert str(path) in message and needle in message and "--registry" in message
    assert path.read_bytes() == content  # never reset


def test_other_sqlite_files_newer_schemas_and_bad_rows_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(RegistryFileError, match="SQLite database of something else"):
        RegistryStore(other)

    newer = tmp_path / "newer.db"
    RegistryStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {store_module.SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryFileError, match="newer than this vlmserve's"):
        RegistryStore(newer)

    bad = tmp_path / "bad.db"
    store = RegistryStore(bad)
    store.register(SPEC)
    store.close()
    with sqlite3.connect(bad) as conn:
        conn.execute("""UPDATE models SET settings = '{"max_model_len": -3}'""")
    with pytest.raises(RegistryFileError, match="model 'a' this vlmserve cannot read"):
        RegistryStore(bad)


def test_unreadable_file_is_a_start_up_error(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(RegistryFileError, match=str(folder)):
        RegistryStore(folder)


def test_migrations_run_in_order_each_in_its_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "registry.db"
    store = RegistryStore(path)
    store.register(SPEC)
    store.close()
    SCHEMA_VERSION = store_module.SCHEMA_VERSION

    def add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE models ADD COLUMN notes TEXT")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE models ADD COLUMN other TEXT")
        raise sqlite3.OperationalError("simulated failure half-way")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, add_notes, broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(store_module.MIGRATIONS))
    with pytest.raises(RegistryFileError, match="simulated failure"):
        RegistryStore(path)
    with sqlite3.connect(path) as conn:
        # The good step stayed.
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(models)")]
        assert "notes" in columns and "other" not in columns  # the failed one rolled back
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:-1])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert [m.spec for m in RegistryStore(path).models()] == [SPEC]


def test_a_version_1_file_gains_media_overrides_and_keeps_its_models(tmp_path: Path) -> None:
    """The file as vlmserve wrote it before media overrides (schema 1): migrated in place,
    its models override nothing; afterwards overrides are stored and read back."""
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as conn:
        store_module.MIGRATIONS[0](conn)
        conn.execute(
            "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            ("old", "/models/old", '{"max_model_len": 512}', None, None, 0, 3, 1.0, 2.0, 7, 0.5),
        )
        conn.execute("PRAGMA user_version = 1")
    store = RegistryStore(path)
    (old,) = store.models()
    assert old.spec == ModelSpec("old", "/models/old", max_model_len=512)
    assert (old.revision, old.memory_bytes, old.load_seconds) == (3, 7, 0.5)
    media = MediaOverrides(allowed_media_domains=("*.example.com",), max_image_pixels=1000)
    store.replace(ModelSpec("old", "/models/old", max_model_len=512, media=media), 3)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    (reread,) = RegistryStore(path).models()
    assert reread.spec.media == media and reread.revision == 4


def test_stored_media_overrides_that_no_longer_read_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = RegistryStore(path)
    store.register(SPEC)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("""UPDATE models SET media = '{"max_pixels": 5}'""")
    with pytest.raises(RegistryFileError, match="max_pixels"):
        RegistryStore(path)
