"""The engine in a process of its own: `ProcessEngine` (this side, an `EngineClient`), the
engine process's loop (worker.py) and what crosses the pipe between them (wire.py)."""

from vlmserve.engine.process.client import ProcessEngine
from vlmserve.engine.process.worker import ProcessSettings

__all__ = ["ProcessEngine", "ProcessSettings"]
