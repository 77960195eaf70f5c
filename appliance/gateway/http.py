"""The OpenAI-compatible surface, /v1/*: parse, authenticate, limit, route, forward, meter."""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from appliance.gateway import responses as responses_api
from appliance.gateway.keys import ApiKey, KeyVerifier
from appliance.gateway.limits import RateLimiter
from appliance.gateway.metering import Meter
from appliance.gateway.proxy import Call, Forwarder, Outcome
from appliance.gateway.routing import Router
from appliance.gateway.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelOnly,
    ResponsesRequest,
)
from appliance.identity.quotas import QuotaGate
from appliance.kernel.errors import (
    ApplianceError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from appliance.store.metrics import RequestRecord

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode
ANONYMOUS = ApiKey(id="anonymous", name="anonymous", project_id="default", prefix="", role="admin",
                   models=[], rpm=None, tpm=None, created_at=0, expires_at=None, revoked_at=None)
_MULTIPART_MODEL = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n')


def openai_error(error: ApplianceError) -> web.Response:
    """OpenAI's error envelope with the error's status (and Retry-After on 429)."""
    body = {"error": {"message": error.message, "type": error.type, "param": error.param,
                      "code": error.code}}
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(error.retry_after + 0.5)))
    return web.Response(status=error.status, body=_encode(body), content_type="application/json",
                        headers=headers)


@web.middleware
async def openai_errors(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Every failure under /v1 answers in OpenAI's error shape."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApplianceError as exc:
        return openai_error(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        return openai_error(PayloadTooLarge(exc.text or "request body too large"))
    except web.HTTPNotFound:
        return openai_error(ApplianceError(f"Unknown request URL: {request.method} "
                                           f"{request.path}.", code="unknown_url"))
    except web.HTTPMethodNotAllowed:
        err = BadRequest(f"Method {request.method} is not allowed on {request.path}.",
                         code="method_not_allowed")
        err.status = 405
        return openai_error(err)


class GatewayViews:
    """Handlers of /v1. Holds no state of its own beyond the objects it is given."""

    def __init__(self, *, router: Router, forwarder: Forwarder, verifier: KeyVerifier,
                 limiter: RateLimiter, meter: Meter, auth_required: bool,
                 quotas: QuotaGate | None = None) -> None:
        self.router = router
        self.quotas = quotas or QuotaGate()
        self.forwarder = forwarder
        self.verifier = verifier
        self.limiter = limiter
        self.meter = meter
        self.auth_required = auth_required
        self._chat = msgspec.json.Decoder(ChatRequest)
        self._completion = msgspec.json.Decoder(CompletionRequest)
        self._embedding = msgspec.json.Decoder(EmbeddingRequest)
        self._responses = msgspec.json.Decoder(ResponsesRequest)
        self._model_only = msgspec.json.Decoder(ModelOnly)
        # request ids: a random per-process prefix and a counter (no urandom per request)
        self._id_prefix = secrets.token_hex(4) + "-"
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/models", self.list_models)
        r.add_get("/v1/models/{model:.+}", self.get_model)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_post("/v1/responses", self.responses)
        for path in ("audio/transcriptions", "audio/translations", "audio/speech",
                     "images/generations", "images/edits", "images/variations"):
            r.add_post(f"/v1/{path}", self._passthrough(path))

    async def _key(self, request: web.Request) -> ApiKey:
        if not self.auth_required:
            return ANONYMOUS
        return await self.verifier.verify(request.headers.get("Authorization"))

    async def list_models(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "appliance"}
                for m in self.router.models()
                if key.allows_model(m) and self.quotas.visible(key, m)]
        return web.Response(body=_encode({"object": "list", "data": data}),
                            content_type="application/json")

    async def get_model(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        model = request.match_info["model"]
        if model not in self.router.models() or not key.allows_model(model) or \
                not self.quotas.visible(key, model):
            raise NotFound(f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return web.Response(body=_encode({"id": model, "object": "model", "created": 0,
                                          "owned_by": "appliance"}),
                            content_type="application/json")

    def _parse(self, decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
        if not body:
            raise BadRequest("The request body is empty; send a JSON object.",
                             code="invalid_json")
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"Invalid request: {exc}", code="invalid_type") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"We could not parse the JSON body of your request: {exc}",
                             code="invalid_json") from None

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        async def build(body: bytes) -> Call:
            req: ChatRequest = self._parse(self._chat, body)
            if not req.messages:
                raise BadRequest("'messages' must contain at least one message.",
                                 param="messages")
            wants = bool(req.stream_options and req.stream_options.include_usage)
            return Call(endpoint="chat/completions", model=req.model, stream=req.stream,
                        body=body, content_type="application/json", client_wants_usage=wants)
        return await self._serve(request, build)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        async def build(body: bytes) -> Call:
            req: CompletionRequest = self._parse(self._completion, body)
            wants = bool(req.stream_options and req.stream_options.include_usage)
            return Call(endpoint="completions", model=req.model, stream=req.stream, body=body,
                        content_type="application/json", client_wants_usage=wants)
        return await self._serve(request, build)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        async def build(body: bytes) -> Call:
            req: EmbeddingRequest = self._parse(self._embedding, body)
            if isinstance(req.input, list) and not req.input:
                raise BadRequest("'input' must not be empty.", param="input")
            return Call(endpoint="embeddings", model=req.model, stream=False, body=body,
                        content_type="application/json")
        return await self._serve(request, build)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        async def build(body: bytes) -> Call:
            req: ResponsesRequest = self._parse(self._responses, body)
            chat = responses_api.to_chat_request(_decode_any(body))
            return Call(endpoint="chat/completions", model=req.model, stream=req.stream,
                        body=_encode(chat), parsed=chat, content_type="application/json",
                        client_wants_usage=True)
        model_holder: list[str] = []

        async def build_and_remember(body: bytes) -> Call:
            call = await build(body)
            model_holder.append(call.model)
            return call
        return await self._serve(
            request, build_and_remember, shape=responses_api.chat_response_to_response,
            stream_shape=lambda: responses_api.ResponsesStream(model_holder[0]),
            endpoint="responses")

    def _passthrough(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def view(request: web.Request) -> web.StreamResponse:
            async def build(body: bytes) -> Call:
                ctype = request.headers.get("Content-Type", "application/octet-stream")
                if ctype.startswith("multipart/"):
                    found = _MULTIPART_MODEL.search(body)
                    if not found:
                        raise BadRequest("The form has no 'model' field.", param="model")
                    model = found.group(1).decode(errors="replace")
                else:
                    model = self._parse(self._model_only, body).model
                return Call(endpoint=path, model=model, stream=False, body=body,
                            content_type=ctype)
            return await self._serve(request, build)
        return view

    async def _serve(self, request: web.Request, build: Callable[[bytes], Awaitable[Call]], *,
                     shape: Callable[[bytes], bytes] | None = None,
                     stream_shape: Callable[[], Any] | None = None,
                     endpoint: str | None = None) -> web.StreamResponse:
        started = time.monotonic()
        outcome = Outcome()
        key: ApiKey | None = None
        call: Call | None = None
        admitted = False
        self.meter.in_flight += 1
        try:
            key = await self._key(request)
            call = await build(await request.read())
            if not key.allows_model(call.model):
                raise Forbidden(f"This API key may not use model `{call.model}`.",
                                param="model", code="model_not_allowed")
            self.quotas.check_model(key, call.model)
            self.quotas.admit(key, request.remote)
            admitted = True
            call.headers = self.limiter.admit(key.id, key.rpm, key.tpm)
            plan = self.router.plan(call.model)
            return await self.forwarder.forward(request, call, plan, outcome, shape=shape,
                                                stream_shape=stream_shape)
        except ApplianceError as exc:
            outcome.status, outcome.error = exc.status, exc.code
            raise
        except web.HTTPRequestEntityTooLarge:
            outcome.status, outcome.error = 413, "payload_too_large"
            raise
        finally:
            self.meter.in_flight -= 1
            tokens = outcome.prompt_tokens + outcome.completion_tokens
            if key is not None and tokens:
                self.limiter.charge(key.id, tokens)
            if admitted and key is not None:
                self.quotas.release(key, tokens)
            self.meter.observe(RequestRecord(
                ts=time.time(), request_id=f"{self._id_prefix}{next(self._ids):x}",
                endpoint=endpoint or (call.endpoint if call else request.path[4:]),
                model=call.model if call else "", route=outcome.route, target=outcome.target,
                key_id=key.id if key else "", project_id=key.project_id if key else "",
                status=outcome.status or 500, error=outcome.error,
                stream=bool(call and call.stream), prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens, ttft_ms=outcome.ttft_ms,
                latency_ms=(time.monotonic() - started) * 1000,
                user_id=key.created_by if key else ""))
