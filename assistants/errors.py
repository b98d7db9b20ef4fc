"""Errors of the assistants domain (all ``common.errors.ConveyorError``, turned into the envelope
by the API's one handler):

* :class:`AssistantModelNotFound` (422 ``model_not_found``): the instance's model is neither a
  model of the inference workers nor a live deployment; ``details.served`` names those served.
* ``common.errors.Unavailable`` (503 ``unavailable`` + ``Retry-After``): the deployment behind an
  instance is stopped or starting (raised by the deployments domain).
* ``common.errors.RateLimited`` (429 ``rate_limited``): over the instance plan's requests/minute.
* ``common.errors.Unauthorized`` (401): an incoming webhook without a valid signature or token.
"""

from __future__ import annotations

from common.errors import ConveyorError, ErrorCode


class AssistantModelNotFound(ConveyorError):
    status_code = 422
    code = ErrorCode.MODEL_NOT_FOUND

    def __init__(self, model: str, served: list[str]) -> None:
        names = ", ".join(served) if served else "none"
        super().__init__(
            f"The model {model!r} is not served here; served models: {names}.",
            details={"model": model, "served": served},
        )
