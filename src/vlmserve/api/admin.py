"""Model administration over HTTP (admin key only; docs/registry.md):

    POST   /v1/models/register         {"alias", "model_name", ...}   201 new, 200 same again
    PUT    /v1/models/{alias}          {..., "expected_revision"}     200
    POST   /v1/models/{alias}/load     {"wait": bool}                 200
    POST   /v1/models/{alias}/unload                                  200
    DELETE /v1/models/{alias}                                         200

The register payload is the serverless platform's (`alias`, `model_name`, `max_model_len`,
`gpu_memory_utilization`) plus our settings; registering stores metadata and loads nothing
unless `load_now`. Refusals: a bad field 400 (naming it), another spec under the alias or
a stale `expected_revision` 409, an unknown alias 404, a model that cannot be ready 503.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field, field_validator

from vlmserve.api.auth import require_model_admin
from vlmserve.api.errors import ADMIN_RESPONSES, APIError
from vlmserve.api.model_cards import AdminModelCard, admin_card
from vlmserve.api.protocol import StrictModel, keep_alive_seconds
from vlmserve.api.state import get_state
from vlmserve.config import MediaConfig
from vlmserve.multimodal.policy import MediaOverrides, PolicyError
from vlmserve.registry import (
    ModelSpec,
    RegistryError,
    RegistryFileError,
    SpecConflict,
    SpecError,
)
from vlmserve.serving.errors import registry_error

router = APIRouter(dependencies=[Depends(require_model_admin)])
T = TypeVar("T")


class MediaPolicy(StrictModel):
    """What this model narrows of the server's media policy (never widens; docs/registry.md)."""

    allowed_media_domains: list[str] | None = Field(
        None, description="hosts or '*.suffix' patterns, within the server's"
    )
    allow_private_media_addresses: bool | None = Field(
        None, description="false refuses private addresses; true only if the server allows them"
    )
    allowed_media_ports: list[int] | None = None
    media_max_redirects: int | None = None
    max_bytes_per_item: int | None = None
    max_bytes_per_request: int | None = None
    max_image_pixels: int | None = None
    allowed_image_formats: list[str] | None = None
    video_max_frames: int | None = None


class ModelSettings(StrictModel):
    """A registration's settings; left out (or null): the server's defaults."""

    model_name: str = Field(description="a model folder or a hub id")
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_num_seqs: int | None = Field(None, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    quantization: Literal["none", "int8"] | None = Field(
        None, description="int8: the decoder's linear layers in int8 (CPU only)"
    )
    device: str | None = Field(None, description="auto, cpu, cuda or cuda:N")
    kv_cache_memory_bytes: int | None = Field(None, ge=1)
    limit_mm_per_prompt: dict[str, int] | None = None
    chat_template: str | None = Field(None, description="a Jinja chat template (the text)")
    tokenizer: str | None = None
    max_waiting: int | None = Field(None, ge=1)
    keep_alive: float | str | None = Field(
        None, description="idle time before unloading: seconds, '5m', '1h30m'; -1 never"
    )
    pinned: bool = False
    media: MediaPolicy | None = None

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: float | str | None) -> float | None:
        return keep_alive_seconds(value)

    def spec(self, alias: str, server_media: MediaConfig) -> ModelSpec:
        """The registration, checked; its media overrides may only narrow `server_media`."""
        fields = self.model_dump(include=set(ModelSettings.model_fields) - {"media"})
        try:
            given = self.media.model_dump(exclude_none=True) if self.media else {}
            media = MediaOverrides.from_dict(given)
            widenings = media.widenings(server_media)
            if widenings:
                raise widenings[0]
            return ModelSpec(alias=alias, media=media, **fields)
        except PolicyError as exc:
            field = f"media.{exc.field}"
            raise APIError(400, f"'{field}': {exc.reason}", field) from exc
        except SpecError as exc:
            raise APIError(400, str(exc), exc.field) from exc


class RegisterRequest(ModelSettings):
    alias: str = Field(description="the name clients put in 'model'")
    load_now: bool = Field(False, description="start loading now (default: on first request)")
    wait: bool = Field(False, description="with load_now: answer once the model is ready")


class ReplaceRequest(ModelSettings):
    expected_revision: int = Field(ge=1, description="the revision this change is based on")
    wait: bool = Field(False, description="answer once the new revision serves")


class LoadRequest(StrictModel):
    wait: bool = Field(False, description="answer once the model is ready")


class Deleted(StrictModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


async def _call(work: Awaitable[T]) -> T:
    """A registry call, its refusals as HTTP errors."""
    try:
        return await work
    except SpecError as exc:
        raise APIError(400, str(exc), exc.field) from exc
    except SpecConflict as exc:
        raise APIError(409, str(exc), code="conflict") from exc
    except RegistryFileError as exc:
        raise APIError(503, str(exc), code="registry_unavailable") from exc
    except RegistryError as exc:
        raise registry_error(exc) from exc


# 201 registers; the same spec again is 200 (documented, so clients and fuzzers expect it).
_REGISTER_RESPONSES = {
    **ADMIN_RESPONSES,
    200: {"model": AdminModelCard, "description": "already registered with the same spec"},
}


@router.post("/v1/models/register", status_code=201, responses=_REGISTER_RESPONSES, tags=["models"])
async def register_model(
    body: RegisterRequest, request: Request, response: Response
) -> AdminModelCard:
    state = get_state(request)
    models = state.models
    spec = body.spec(body.alias, state.media.connector.config)
    status, created = await _call(models.register(spec, load=body.load_now))
    if body.load_now and body.wait:
        status = await _call(models.load(spec.alias, wait=True))
    if not created:
        response.status_code = 200
    return admin_card(status)


@router.put("/v1/models/{alias:path}", responses=ADMIN_RESPONSES, tags=["models"])
async def replace_model(alias: str, body: ReplaceRequest, request: Request) -> AdminModelCard:
    state = get_state(request)
    models = state.models
    spec = body.spec(alias, state.media.connector.config)
    status = await _call(models.replace(spec, body.expected_revision))
    if body.wait:
        status = await _call(models.load(alias, wait=True))
    return admin_card(status)


@router.post("/v1/models/{alias:path}/load", responses=ADMIN_RESPONSES, tags=["models"])
async def load_model(
    alias: str, request: Request, body: LoadRequest | None = None
) -> AdminModelCard:
    wait = body.wait if body is not None else False
    return admin_card(await _call(get_state(request).models.load(alias, wait=wait)))


@router.post("/v1/models/{alias:path}/unload", responses=ADMIN_RESPONSES, tags=["models"])
async def unload_model(alias: str, request: Request) -> AdminModelCard:
    return admin_card(await _call(get_state(request).models.unload(alias)))


@router.delete("/v1/models/{alias:path}", responses=ADMIN_RESPONSES, tags=["models"])
async def remove_model(alias: str, request: Request) -> Deleted:
    await _call(get_state(request).models.remove(alias))
    return Deleted(id=alias)
