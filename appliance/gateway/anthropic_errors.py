"""Anthropic error bodies → OpenAI's error envelope and a fitting status."""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = ["anthropic_error_to_openai", "openai_error_body"]

json_decoder: Final = msgspec.json.Decoder()

# Anthropic error type -> (OpenAI error type, code); codes match appliance.kernel.errors.
_ERROR_KINDS: Final[dict[str, tuple[str, str]]] = {
    "invalid_request_error": ("invalid_request_error", "invalid_request"),
    "authentication_error": ("server_error", "upstream_auth_error"),
    "permission_error": ("server_error", "upstream_auth_error"),
    "billing_error": ("server_error", "upstream_auth_error"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "payload_too_large"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "api_error": ("server_error", "upstream_error"),
    "overloaded_error": ("server_error", "service_unavailable"),
    "timeout_error": ("server_error", "upstream_timeout"),
}


def anthropic_error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """Translate an Anthropic error response into ``(status, OpenAI error envelope)``.

    529 ``overloaded_error`` becomes 503. A 401/403 from Anthropic means the appliance's own
    provider key is wrong, not the client's, so it becomes 502 rather than telling the client
    to fix a key it never sent. Statuses that are not errors become 502.
    """
    kind: str | None = None
    message: str | None = None
    try:
        decoded = json_decoder.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
        kind = decoded["error"].get("type")
        message = decoded["error"].get("message")
    if not isinstance(message, str) or not message:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"Anthropic answered HTTP {status}" + (f": {snippet}" if snippet else "")
    if not isinstance(kind, str):
        kind = _error_kind_for_status(status)

    if kind == "overloaded_error" or status == 529:
        status, kind = 503, "overloaded_error"
    elif kind in ("authentication_error", "permission_error") or status in (401, 403):
        status = 502
        message = f"the Anthropic provider rejected the appliance's credentials: {message}"
    elif not 400 <= status <= 599:
        status = 502
    return status, {"error": openai_error_body(kind, message)}


def _error_kind_for_status(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def openai_error_body(kind: str, message: str) -> dict[str, Any]:
    error_type, code = _ERROR_KINDS.get(kind, ("server_error", "upstream_error"))
    return {"message": message, "type": error_type, "param": None, "code": code}
