"""The small routes: the model list, probes, version and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import vlmserve
from vlmserve.api.auth import require_admin_key, require_api_key
from vlmserve.api.errors import ERROR_RESPONSES, error_body
from vlmserve.api.model_cards import ModelCard, ModelList, card
from vlmserve.api.state import get_state
from vlmserve.registry import RegistryError
from vlmserve.serving.errors import registry_error

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[card(status) for status in get_state(request).models.list()])


@router.get(
    "/v1/models/{model:path}", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    # Looked up, not acquired: describing a model must never load it.
    try:
        status = get_state(request).models.status(model)
    except RegistryError as exc:
        raise registry_error(exc) from exc
    return card(status)


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers, and neither the model lifecycle loop nor an engine
    loop has stopped making progress (--liveness-timeout). Loading models are alive."""
    problems = get_state(request).models.liveness_problems()
    if problems:
        body = error_body(503, "; ".join(problems), code="no_progress")
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> JSONResponse:
    """Readiness: the start-up models are loaded (and warmed up) and every loaded engine's
    loop runs; no engine holds requests without progress (the watchdog,
    serving/watchdog.py). The 503 names what it waits for (e.g. "model 'x' is loading
    (12 s so far)")."""
    models = get_state(request).models
    problems = models.problems()
    if problems:
        code = "shutting_down" if models.closed else "not_ready"
        body = error_body(503, "; ".join(problems), code=code)
        return JSONResponse(body, status_code=503)
    stuck = request.app.state.watchdog.check()
    if stuck:
        body = error_body(503, "; ".join(stuck), code="engine_stuck")
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
