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
from vlmserve.api.usage import check_model

router = APIRouter()


def _card(request: Request) -> ModelCard:
    model = get_state(request).model
    return ModelCard(
        id=model.name, created=model.created, root=model.root, max_model_len=model.max_model_len
    )


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request)])


@router.get(
    "/v1/models/{model:path}", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    check_model(get_state(request), model)
    return _card(request)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/ready", responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> JSONResponse:
    """Readiness: the model is loaded (it is before the app exists) and the engine loop runs."""
    if not get_state(request).engine.alive:
        body = error_body(503, "the engine loop is not running", code="engine_dead")
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
