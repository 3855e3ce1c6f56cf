"""Transport-free request handling: model lookup through the registry, chat template, media,
generation. Called by the HTTP API (`vlmserve.api`), the content-safety app and Ray replicas;
imports no web framework (an import-linter contract)."""

from vlmserve.serving.errors import ClientDisconnected, ServingError
from vlmserve.serving.generation import Generation
from vlmserve.serving.media import MediaLoader, MeteredConnector
from vlmserve.serving.scoring import ScoreRequest
from vlmserve.serving.service import ChatRequest, CompletionRequest, Serving
from vlmserve.serving.tool_calls import ToolCall, ToolCallStream, parse_output
from vlmserve.serving.tools import Tools

__all__ = [
    "ChatRequest",
    "ClientDisconnected",
    "CompletionRequest",
    "Generation",
    "MediaLoader",
    "MeteredConnector",
    "ScoreRequest",
    "Serving",
    "ServingError",
    "ToolCall",
    "ToolCallStream",
    "Tools",
    "parse_output",
]
