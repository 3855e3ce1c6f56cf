"""Stored responses: per tenant, persistent across store instances, deleted for good."""

from __future__ import annotations

from pathlib import Path

from vlmserve.serving.response_store import FILE_NAME, ResponseStore, StoredResponse

STORED = StoredResponse({"id": "resp_1", "output": []}, [{"role": "user", "content": "hi"}])


async def test_a_response_belongs_to_its_tenant(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing is created before the first use
    await store.put("a", STORED)
    assert await store.get("a", "resp_1") == STORED
    assert await store.get("b", "resp_1") is None
    assert not await store.delete("b", "resp_1")
    store.close()
    reopened = ResponseStore(tmp_path / "data")
    assert (tmp_path / "data" / FILE_NAME).is_file()
    assert await reopened.get("a", "resp_1") == STORED
    assert await reopened.delete("a", "resp_1")
    assert await reopened.get("a", "resp_1") is None
    assert not await reopened.delete("a", "resp_1")
    reopened.close()
