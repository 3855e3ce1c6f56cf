"""Structured output: compile constraints (JSON schema, regex, choice, grammar, structural
tag) with llguidance, mask logits, jump ahead over forced tokens and close before the budget
runs out. The engine talks to `StructuredBackend` and `RequestGrammar` only."""

from vlmserve.structured.backend import CompiledGrammar, CompileStats, StructuredBackend
from vlmserve.structured.bitmask import allocate_bitmask, apply_token_bitmask
from vlmserve.structured.errors import StructuredOutputError
from vlmserve.structured.request import RequestGrammar

__all__ = [
    "CompileStats",
    "CompiledGrammar",
    "RequestGrammar",
    "StructuredBackend",
    "StructuredOutputError",
    "allocate_bitmask",
    "apply_token_bitmask",
]
