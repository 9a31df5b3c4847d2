"""An OpenAI-compatible HTTP endpoint on the user's machine, in front of the client SDK.

Why local: this process is the pinfer client. It receives prompts in the clear from programs on the
same machine, tokenizes, shares and seals them with :class:`pinfer.Client`, and sends only sealed
shares to the orchestrator; the answer is opened here. So it listens on a loopback address by default,
and what it logs is public under the threat model (lengths, counts, timings), never a prompt or a text.

It serves ``GET /v1/models``, ``GET /v1/models/{model}``, ``POST /v1/chat/completions`` (the model's chat
template) and ``POST /v1/completions`` (the prompt as it is, or token ids), with ``stream`` as
server-sent events, ``max_tokens``, ``stop`` and ``usage``. Generation is greedy: a parameter it cannot
honour (``temperature`` above 0, ``n`` above 1, penalties, ``logit_bias``, ``logprobs``, tools, a JSON
response format) or does not know is refused with the API's error body ``{"error": {"message", "type",
"param", "code"}}`` and status 400, never replaced by a default. An omitted ``temperature`` means greedy,
the only decoding there is. An omitted ``max_tokens`` is as many tokens as the context and the
service's limit allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pinfer.keys.session import OutputIntegrityError
from pinfer.keys.trust import UntrustedStatementError
from pinfer.model.tokenizer import NoChatTemplateError, encode_chat, encode_prompt
from pinfer.service.client import Client, VerifiedModel
from pinfer.service.completion import TextCompletion

log = logging.getLogger("pinfer.service.openai_api")

MAX_STOP_STRINGS = 4
DISCONNECT_POLL_S = 0.5
"""How often a request that is not streamed checks that its caller is still there."""
CHAT_ROLES = ("system", "developer", "user", "assistant")

# Parameters that change nothing under greedy decoding of one choice, so accepting them hides nothing.
_NEUTRAL = ("seed", "top_p", "user", "parallel_tool_calls")
# pinfer's own fields: the KV policy and budget the parties run (``ModelInfo.kv_policies``).
_PINFER = ("kv_policy", "kv_budget")
_COMMON = ("model", "max_tokens", "stream", "stream_options", "stop", "temperature", "n", "presence_penalty",
           "frequency_penalty", "logit_bias", "logprobs", *_NEUTRAL, *_PINFER)
CHAT_PARAMETERS = frozenset((*_COMMON, "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                             "functions", "function_call", "response_format"))
COMPLETION_PARAMETERS = frozenset((*_COMMON, "prompt", "echo", "best_of", "suffix"))

# How an error of the pinfer service reaches the HTTP caller: status, error type, code. The bearer token
# is this endpoint's, not the caller's, so the service refusing it is a gateway error, not a 401.
_GRPC_ERRORS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
    grpc.StatusCode.UNAUTHENTICATED: (502, "server_error", "upstream_unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (502, "server_error", "upstream_unauthenticated"),
}


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


SERVICE_ERRORS = (grpc.RpcError, UntrustedStatementError, OutputIntegrityError)
"""What the service or the client's checks of it raise; anything else is this endpoint's own failure."""


def from_service_error(exc: Exception) -> APIError:
    """The HTTP error for one of :data:`SERVICE_ERRORS`, or a generic server error for anything else
    (whose message is not passed on: it is no part of the API)."""
    if isinstance(exc, grpc.RpcError):
        status, type_, code = _GRPC_ERRORS.get(exc.code(), (500, "server_error", None))
        return APIError(status, f"pinfer service: {exc.code().name}: {exc.details()}", type_, None, code)
    if isinstance(exc, (UntrustedStatementError, OutputIntegrityError)):
        return APIError(502, f"pinfer service failed a trust check: {exc}", "server_error", None, "untrusted_service")
    return APIError(500, f"internal error of the endpoint ({type(exc).__name__}); see its log", "server_error")


def _unsupported_value(param: str, value: Any, allowed: str) -> APIError:
    return APIError(400, f"Unsupported value: '{param}' does not support {json.dumps(value)} on pinfer; {allowed}.",
                    param=param, code="unsupported_value")


def _invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _check_greedy_only(body: dict[str, Any]) -> None:
    """Refuse what private greedy decoding of one choice cannot honour."""
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise _invalid("temperature", "'temperature' must be a number from 0 to 2.")
        if temperature > 0:
            raise _unsupported_value("temperature", temperature,
                                     "only 0 is supported (greedy decoding; private sampling is not implemented)")
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported_value("n", n, "only 1 is supported")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty) not in (None, 0):
            raise _unsupported_value(penalty, body[penalty], "only 0 is supported")
    if body.get("logit_bias"):
        raise _unsupported_value("logit_bias", body["logit_bias"], "logit biases are not supported")
    if body.get("logprobs") not in (None, False, 0):
        raise _unsupported_value("logprobs", body["logprobs"], "log probabilities are not returned")
    if body.get("top_logprobs") not in (None, 0):
        raise _unsupported_value("top_logprobs", body["top_logprobs"], "log probabilities are not returned")
    for tool_param in ("tools", "functions"):
        if body.get(tool_param):
            raise _unsupported_value(tool_param, body[tool_param], "tool calls are not supported")
    for choice_param in ("tool_choice", "function_call"):
        if body.get(choice_param) not in (None, "none"):
            raise _unsupported_value(choice_param, body[choice_param], "tool calls are not supported")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise _unsupported_value("response_format", response_format, "only {\"type\": \"text\"} is supported")
    if body.get("echo"):
        raise _unsupported_value("echo", body["echo"], "only false is supported")
    if body.get("best_of") not in (None, 1):
        raise _unsupported_value("best_of", body["best_of"], "only 1 is supported")
    if body.get("suffix"):
        raise _unsupported_value("suffix", body["suffix"], "suffixes are not supported")


@dataclass(frozen=True)
class CompletionRequest:
    """A request's validated parameters (the prompt already tokenized)."""

    model: VerifiedModel
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    kv_policy: str | None
    kv_budget: float | None


class OpenAIEndpoint:
    """The request handlers over one SDK client; :meth:`app` is the ASGI application."""

    def __init__(self, client: Client, api_key: str | None = None) -> None:
        self._client = client
        self._api_key = api_key

    def app(self) -> Starlette:
        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                            code="not_found" if exc.status_code == 404 else None).response()

        return Starlette(routes=[
            Route("/v1/models", self._guarded(self.list_models), methods=["GET"]),
            Route("/v1/models/{model:path}", self._guarded(self.retrieve_model), methods=["GET"]),
            Route("/v1/chat/completions", self._guarded(self.chat_completions), methods=["POST"]),
            Route("/v1/completions", self._guarded(self.completions), methods=["POST"]),
        ], exception_handlers={HTTPException: http_error})

    def _guarded(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """The handler behind the API key check, every error answered with the API's error body."""
        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except APIError as exc:
                return exc.response()
            except Exception as exc:  # answered here: a server's traceback log could quote the prompt
                log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
                return from_service_error(exc).response()

        return endpoint

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode()):
            raise APIError(401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")

    # --- models ------------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        models = await self._service(self._client.models)
        return JSONResponse({"object": "list", "data": [_model_object(m) for m in models]})

    async def retrieve_model(self, request: Request) -> Response:
        return JSONResponse(_model_object(await self._model(request.path_params["model"])))

    async def _model(self, name: Any) -> VerifiedModel:
        if not isinstance(name, str) or not name:
            raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
        try:
            return await run_in_threadpool(self._client.model_info, name)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise APIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               param="model", code="model_not_found") from None
            raise from_service_error(exc) from None
        except SERVICE_ERRORS as exc:
            raise from_service_error(exc) from None

    async def _service(self, call: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(call)
        except SERVICE_ERRORS as exc:
            raise from_service_error(exc) from None

    # --- completions -------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = await _json_body(request, CHAT_PARAMETERS)
        model = await self._model(body.get("model"))
        messages = _messages(body.get("messages"))
        tokenizer = await run_in_threadpool(self._client.tokenizer, model)
        try:
            prompt_ids = encode_chat(tokenizer, messages)
        except NoChatTemplateError as exc:
            raise APIError(400, f"model `{model.name}`: {exc}; use /v1/completions for raw text", param="messages",
                           code="unsupported_value") from None
        parsed = _parameters(body, model, prompt_ids, "messages")
        return await self._respond(request, parsed, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await _json_body(request, COMPLETION_PARAMETERS)
        model = await self._model(body.get("model"))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one prompt
        if isinstance(prompt, str):
            tokenizer = await run_in_threadpool(self._client.tokenizer, model)
            prompt_ids = encode_prompt(tokenizer, prompt, raw=True)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_ids = prompt
            if min(prompt_ids) < 0 or max(prompt_ids) >= model.config.vocab_size:
                raise _invalid("prompt", f"token ids must lie in [0, {model.config.vocab_size}).")
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise _unsupported_value("prompt", f"a batch of {len(prompt)} prompts", "send one prompt per request")
        else:
            raise _invalid("prompt", "'prompt' must be a string, a list of token ids, or a list of one of either.")
        parsed = _parameters(body, model, prompt_ids, "prompt")
        return await self._respond(request, parsed, chat=False)

    async def _respond(self, http_request: Request, request: CompletionRequest, chat: bool) -> Response:
        completion = TextCompletion(self._client, request.model, request.prompt_ids, request.max_tokens, request.stop,
                                    kv_policy=request.kv_policy, kv_budget=request.kv_budget)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        frame = _Frame(response_id, request.model.name, chat)
        if request.stream:
            return StreamingResponse(self._events(completion, frame, request.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        progress = _Progress(response_id, completion)
        collecting = asyncio.ensure_future(_joined(_from_thread(progress.track(completion.pieces()))))
        while not (await asyncio.wait({collecting}, timeout=DISCONNECT_POLL_S))[0]:
            if await http_request.is_disconnected():
                collecting.cancel()  # stops the generation at its next token
                log.info("%s: the caller went away; generation cancelled", response_id)
                return Response(status_code=499)  # nobody reads it
        try:
            text = collecting.result()
        except Exception as exc:
            progress.failed(exc)
            raise from_service_error(exc) from None
        return JSONResponse(frame.whole(text, completion))

    async def _events(self, completion: TextCompletion, frame: _Frame, include_usage: bool) -> AsyncIterator[str]:
        progress = _Progress(frame.id, completion)
        if frame.chat:
            yield _sse(frame.chunk({"role": "assistant", "content": ""}, None))
        try:
            async for piece in _from_thread(progress.track(completion.pieces())):
                yield _sse(frame.chunk(piece, None))
        except Exception as exc:
            progress.failed(exc)
            yield _sse(from_service_error(exc).body())  # the status line has gone: the error is an event
            return
        yield _sse(frame.chunk(None, completion.finish_reason))
        if include_usage:
            yield _sse(frame.usage_chunk(completion))
        yield "data: [DONE]\n\n"


class _Frame:
    """The response objects of one request, whole or as stream chunks."""

    def __init__(self, response_id: str, model: str, chat: bool) -> None:
        self.id = response_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, text: str, completion: TextCompletion) -> dict[str, Any]:
        content: dict[str, Any] = ({"message": {"role": "assistant", "content": text, "refusal": None}} if self.chat
                                   else {"text": text})
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": completion.finish_reason}
        return {**self._envelope([choice], chunk=False), "usage": _usage(completion)}

    def chunk(self, delta: str | dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            content: dict[str, Any] = {"delta": delta if isinstance(delta, dict) else
                                       ({} if delta is None else {"content": delta})}
        else:
            content = {"text": delta or ""}
        return self._envelope([{"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}], chunk=True)

    def usage_chunk(self, completion: TextCompletion) -> dict[str, Any]:
        return {**self._envelope([], chunk=True), "usage": _usage(completion)}


class _Progress:
    """Logs a request's public progress: the prefill's start, the first token, the end."""

    def __init__(self, response_id: str, completion: TextCompletion) -> None:
        self._id = response_id
        self._completion = completion
        self._start = time.monotonic()

    def track(self, pieces: Iterator[str]) -> Iterator[str]:
        log.info("%s: prefill of %d prompt tokens on shares", self._id, self._completion.prompt_tokens)
        first = True
        with contextlib.closing(pieces):  # closed early, the completion cancels its generation
            for piece in pieces:
                if first:
                    log.info("%s: first text after %.1f s", self._id, time.monotonic() - self._start)
                    first = False
                yield piece
        log.info("%s: %d tokens (%s) in %.1f s", self._id, self._completion.completion_tokens,
                 self._completion.finish_reason, time.monotonic() - self._start)

    def failed(self, exc: Exception) -> None:
        # The type, not the message: an unforeseen exception's message could hold text of the prompt.
        reason = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
        log.warning("%s: failed after %.1f s: %s", self._id, time.monotonic() - self._start, reason)


def _model_object(model: VerifiedModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "pinfer"}


def _usage(completion: TextCompletion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _json_body(request: Request, known: frozenset[str]) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request: it must be a JSON object.")
    for name in body:
        if name not in known:
            raise APIError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    _check_greedy_only(body)
    return body


def _messages(messages: Any) -> list[dict[str, str]]:
    """The conversation as ``{"role", "content"}`` turns with text content."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "'messages' must be a non-empty array of messages.")
    turns = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(param, f"'{param}' must be an object.")
        role = message.get("role")
        if role == "tool" or "tool_calls" in message or "function_call" in message:
            raise _unsupported_value(f"{param}.role", role, "tool calls are not supported")
        if role not in CHAT_ROLES:
            raise _invalid(f"{param}.role", f"'{param}.role' must be one of {', '.join(CHAT_ROLES)}.")
        for key in message:
            if key not in ("role", "content"):
                raise APIError(400, f"Unknown parameter: '{param}.{key}'.", param=f"{param}.{key}",
                               code="unknown_parameter")
        turns.append({"role": role, "content": _text_content(message.get("content"), f"{param}.content")})
    return turns


def _text_content(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _unsupported_value(param, part.get("type"), "only text content parts are supported")
        return "".join(part["text"] for part in content)
    raise _invalid(param, f"'{param}' must be a string or an array of text parts.")


def _parameters(body: dict[str, Any], model: VerifiedModel, prompt_ids: list[int], prompt_param: str) -> CompletionRequest:
    context = model.config.max_positions
    room = min(model.max_new_tokens, context - len(prompt_ids))
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {context} tokens; the prompt is "
                            f"{len(prompt_ids)} tokens.", param=prompt_param, code="context_length_exceeded")
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(param)
    if max_tokens is None:
        max_tokens = room
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _invalid(param, f"'{param}' must be an integer of at least 1.")
    elif max_tokens > model.max_new_tokens:
        raise _invalid(param, f"'{param}' is {max_tokens}; the service generates at most {model.max_new_tokens} "
                              "tokens per request.")
    elif max_tokens > room:
        raise APIError(400, f"This model's maximum context length is {context} tokens; the prompt is "
                            f"{len(prompt_ids)} tokens and {param} is {max_tokens}.", param=param,
                       code="context_length_exceeded")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else stop if stop is not None else ()
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise _invalid("stop", "'stop' must be a string or an array of strings.")
    if len(stops) > MAX_STOP_STRINGS:
        raise _invalid("stop", f"'stop' holds at most {MAX_STOP_STRINGS} strings.")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be a boolean.")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _invalid("stream_options", "'stream_options' is {\"include_usage\": bool}, and only with stream: true.")
    include_usage = bool(options and options.get("include_usage"))
    kv_policy, kv_budget = body.get("kv_policy"), body.get("kv_budget")
    if kv_policy is not None and not isinstance(kv_policy, str):
        raise _invalid("kv_policy", "'kv_policy' must be a string.")
    if kv_budget is not None and (isinstance(kv_budget, bool) or not isinstance(kv_budget, (int, float))):
        raise _invalid("kv_budget", "'kv_budget' must be a number.")
    try:
        model.kv_choice(kv_policy, kv_budget)
    except ValueError as exc:
        raise _invalid("kv_budget" if kv_policy is None or "budget" in str(exc) else "kv_policy", str(exc)) from None
    return CompletionRequest(model, prompt_ids, max_tokens, tuple(stops), stream, include_usage, kv_policy, kv_budget)


_END = object()


async def _joined(pieces: AsyncIterator[str]) -> str:
    return "".join([piece async for piece in pieces])


async def _from_thread(pieces: Iterator[str]) -> AsyncIterator[str]:
    """Run a blocking iterator on its own thread, yielding its items here as they come.

    Why a thread per request rather than a thread-pool call per item: a caller that goes away
    must end the generation, and only the thread running the iterator can close it (it stops at the
    next token, which cancels the generation on the service).
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    abandoned = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            abandoned.set()

    def produce() -> None:
        try:
            for piece in pieces:
                if abandoned.is_set():
                    break
                put(piece)
        except BaseException as exc:  # handed to the reader, which raises it
            put(exc)
        else:
            put(_END)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    threading.Thread(target=produce, name="pinfer-openai-completion", daemon=True).start()
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        abandoned.set()
