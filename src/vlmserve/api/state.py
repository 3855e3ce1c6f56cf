"""What every handler reaches through `request.app.state.vlm`: the serving layer (with the
model registry and media loading), configuration and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from vlmserve.api.metrics import Metrics
from vlmserve.api.server_config import ServerConfig
from vlmserve.registry import ModelRegistry
from vlmserve.serving import MediaLoader, Serving


@dataclass
class ServingState:
    serving: Serving
    config: ServerConfig
    metrics: Metrics

    @property
    def models(self) -> ModelRegistry:
        return self.serving.models

    @property
    def media(self) -> MediaLoader:
        return self.serving.media


def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.vlm
    return state
