"""The small routes: the model list, probes, version and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import vlmserve
from vlmserve.api.auth import require_admin_key, require_api_key
from vlmserve.api.errors import ERROR_RESPONSES, error_body
from vlmserve.api.responses import ModelCard, ModelList
from vlmserve.api.state import get_state
from vlmserve.registry import ModelInfo, RegistryError
from vlmserve.serving.errors import registry_error

router = APIRouter()


def _card(model: ModelInfo) -> ModelCard:
    return ModelCard(
        id=model.name, created=model.created, root=model.root, max_model_len=model.max_model_len
    )


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(status.info) for status in get_state(request).models.list()])


@router.get(
    "/v1/models/{model:path}", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    # Looked up, not acquired: describing a model must never load it.
    try:
        status = get_state(request).models.status(model)
    except RegistryError as exc:
        raise registry_error(exc) from exc
    return _card(status.info)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/ready", responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> JSONResponse:
    """Readiness: every model the registry must serve is loaded and its engine loop runs."""
    models = get_state(request).models
    if models.closed:
        body = error_body(503, "the server is shutting down", code="shutting_down")
        return JSONResponse(body, status_code=503)
    problems = models.problems()
    if problems:
        body = error_body(503, "; ".join(problems), code="engine_dead")
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": vlmserve.__version__}


@router.get(
    "/metrics",
    dependencies=[Depends(require_admin_key)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: ERROR_RESPONSES[401]},
)
async def metrics(request: Request) -> Response:
    registry = get_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
