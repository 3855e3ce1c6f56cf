"""`POST /v1/moderations` in OpenAI's shape, scored and answered by `safety.moderator`; the
CLI mounts `moderation_router(policy, max_images)` on the server (docs/safety.md)."""

from vlmserve.safety.moderations.router import moderation_router

__all__ = ["moderation_router"]
