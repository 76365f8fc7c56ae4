"""The server HTTP API (``POST /api/<method>``), shaped so PyPI ``cent`` works unchanged.

docs/protocol.md section 9: key in ``X-API-Key``, ``Authorization: apikey <key>`` or
``?api_key=``; otherwise 401 with a JSON error that says which setting to check
(never the key). Answers are HTTP 200 with ``{"result":...}`` or
``{"error":{...}}``, unless the request asks for the transport error mode.
Channel permissions do not apply: this is the backend speaking. Malformed input
gets a JSON error, never a traceback.

An error's ``code`` and ``message`` are the protocol's fixed catalog; a refused
request may add ``detail``, one line naming the field and what was wrong with
it (``"data: missing (send data or b64data)"``), built only from the request
and the configuration. The log line of the refusal says the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from msgspec import Raw, Struct

from tidings.channels import NAMESPACE_BOUNDARY, PRIVATE_PREFIX, check_channel_name
from tidings.errors import ApiErrorCode, BrokerUnavailable, Disconnect, Error, ErrorCode, ReplyError
from tidings.node import Node
from tidings.protocol.codec import JSON_INPUT_ERRORS, compact_raw
from tidings.protocol.messages import NO_DATA, StreamPosition
from tidings.server import map_api
from tidings.server.exchange import HttpRequest
from tidings.server.http import Response, json_response

log = logging.getLogger("tidings.api")

_encode = msgspec.json.encode

# --------------------------------------------------------------------------- requests


class _Since(Struct):
    offset: int = 0
    epoch: str = ""


class PublishRequest(Struct):
    channel: str = ""
    data: Raw = NO_DATA
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    delta: bool = False
    key: str = ""


class BroadcastRequest(Struct):
    channels: list[str] = []
    data: Raw = NO_DATA
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    delta: bool = False
    key: str = ""


class SubscribeRequest(Struct):
    user: str = ""
    channel: str = ""
    client: str = ""
    session: str = ""
    info: Raw = NO_DATA
    data: Raw = NO_DATA
    recover_since: _Since | None = None


class UnsubscribeRequest(Struct):
    user: str = ""
    channel: str = ""
    client: str = ""
    session: str = ""


class _DisconnectObject(Struct):
    code: int = 3503
    reason: str = "force disconnect"


class DisconnectRequest(Struct):
    user: str = ""
    client: str = ""
    session: str = ""
    whitelist: list[str] = []
    disconnect: _DisconnectObject | None = None


class RefreshRequest(Struct):
    user: str = ""
    client: str = ""
    session: str = ""
    expired: bool = False
    expire_at: int = 0
    info: Raw = NO_DATA


class ChannelRequest(Struct):
    channel: str = ""


class HistoryRequest(Struct):
    channel: str = ""
    limit: int = 0
    since: _Since | None = None
    reverse: bool = False


class ChannelsRequest(Struct):
    pattern: str = ""


class EmptyRequest(Struct):
    pass


class BatchRequest(Struct):
    commands: list[dict[str, Raw]] = []
    parallel: bool = False


class LegacyCommand(Struct):
    method: str = ""
    params: Raw = NO_DATA


class ApiError(Exception):
    """An error answer: the catalog's code and message, plus an optional ``detail`` line."""

    def __init__(self, error: Error, detail: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.detail = detail


def _bad_request(detail: str = "") -> ApiError:
    return ApiError(ApiErrorCode.BAD_REQUEST, detail)


def _required(name: str) -> ApiError:
    return _bad_request(f"{name}: missing")


# --------------------------------------------------------------------------- methods


def _payload(data: Raw, b64data: str) -> Raw:
    if len(data):
        try:
            return Raw(compact_raw(bytes(data)))
        except RecursionError:
            raise _bad_request("data: nested too deeply") from None
    if b64data:
        try:
            decoded = base64.b64decode(b64data, validate=True)
            msgspec.json.decode(decoded)
        except (binascii.Error, ValueError, *JSON_INPUT_ERRORS):
            raise _bad_request("b64data: expected base64 of a JSON document") from None
        return Raw(compact_raw(decoded))
    raise _bad_request("data: missing (send data, or b64data)")


_BROKER_UNAVAILABLE = ErrorCode.INTERNAL
"""The engine did not answer in time: temporary, the caller may retry (with an idempotency key)."""


class ServerApi:
    """Executes API methods against a node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._methods: dict[str, tuple[type[Struct], Callable[[Any], Awaitable[Any]]]] = {
            "publish": (PublishRequest, self.publish),
            "broadcast": (BroadcastRequest, self.broadcast),
            "subscribe": (SubscribeRequest, self.subscribe),
            "unsubscribe": (UnsubscribeRequest, self.unsubscribe),
            "disconnect": (DisconnectRequest, self.disconnect),
            "refresh": (RefreshRequest, self.refresh),
            "presence": (ChannelRequest, self.presence),
            "presence_stats": (ChannelRequest, self.presence_stats),
            "history": (HistoryRequest, self.history),
            "history_remove": (ChannelRequest, self.history_remove),
            "channels": (ChannelsRequest, self.channels),
            "info": (EmptyRequest, self.info),
        }
        for name, (map_request, map_handler) in map_api.METHODS.items():  # section 14
            self._methods[name] = (map_request, functools.partial(map_handler, node))

    @property
    def method_names(self) -> list[str]:
        return [*self._methods, "batch"]

    async def call(
        self, method: str, params: bytes, *, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> Any:
        """Run one method on its JSON params (bytes, decoded once); raises :class:`ApiError`.

        Params are decoded straight into the method's typed request, so a
        publication's ``data`` stays the raw JSON text it arrived as. Each call
        is counted (``tidings_api_requests_total``) and, with OpenTelemetry on,
        traced as ``tidings.api.<method>``: a child of the caller's trace when
        the request's ``headers`` carry a ``traceparent``.
        """
        node = self.node
        name = method if method in self._methods or method == "batch" else "unknown"
        started = time.perf_counter()
        code = 0
        with node.tracing.span(
            f"tidings.api.{name}", server=headers is not None, headers=headers
        ) as span:
            try:
                return await self._run(method, params)
            except ApiError as exc:
                code = exc.error.code
                span.fail(code, exc.error.message)
                raise
            except Exception:
                code = ApiErrorCode.INTERNAL.code
                span.fail(code, ApiErrorCode.INTERNAL.message)
                raise
            finally:
                node.metrics.api_call(name, code, time.perf_counter() - started)

    async def _run(self, method: str, params: bytes) -> Any:
        if method == "batch":
            return await self.batch(params)
        entry = self._methods.get(method)
        if entry is None:
            raise self._refused(
                method,
                ApiError(
                    ApiErrorCode.NOT_FOUND,
                    f"no API method {method[:64]!r}; methods: {', '.join(self.method_names)}",
                ),
            )
        request_type, handler = entry
        params = params.strip() or b"{}"
        try:
            request = msgspec.json.decode(params, type=request_type)
        except msgspec.ValidationError as exc:
            raise self._refused(method, _bad_request(_validation_detail(exc))) from None
        except JSON_INPUT_ERRORS:
            raise self._refused(method, _bad_request("params: expected a JSON object")) from None
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.error.code == ApiErrorCode.BAD_REQUEST.code:
                exc.detail = _with_unknown_fields(exc.detail, params, request_type)
            raise self._refused(method, exc, channel=getattr(request, "channel", "")) from None
        except ReplyError as exc:
            channel = getattr(request, "channel", "")
            detail = getattr(exc, "detail", "") or self.channel_detail(channel, exc.error)
            error = ApiError(_api_error(exc.error), detail)
            raise self._refused(method, error, channel=channel) from None
        except BrokerUnavailable as exc:
            log.warning("API %s failed: %s", method, exc, extra={"code": 100})
            raise ApiError(_BROKER_UNAVAILABLE) from None

    def _refused(self, method: str, error: ApiError, *, channel: str = "") -> ApiError:
        """Log a refused call with its detail (the field and what was wrong); return it."""
        fields: dict[str, Any] = {"code": error.error.code}
        if channel:
            fields["channel"] = channel[:255]
        log.info(
            "API %s refused: %d %s%s",
            method[:64],
            error.error.code,
            error.error.message,
            f" ({error.detail})" if error.detail else "",
            extra=fields,
        )
        return error

    def channel_detail(self, channel: str, error: Error) -> str:
        """Why ``channel`` was refused with ``error``: its length, its form or its namespace."""
        if error.code == ErrorCode.UNKNOWN_CHANNEL.code:
            bare = channel[1:] if channel.startswith(PRIVATE_PREFIX) else channel
            namespace = bare.partition(NAMESPACE_BOUNDARY)[0]
            return (
                f"channel: unknown namespace {namespace!r}; "
                f"configure it as [channels.namespaces.{namespace}]"
            )
        if error.code != ErrorCode.BAD_REQUEST.code:
            return ""
        if not channel:
            return "channel: missing"
        limit = self.node.config.channel_max_length
        size = len(channel.encode("utf-8", "surrogatepass"))
        if size > limit:
            return f"channel: {size} bytes, longer than channel_max_length ({limit})"
        try:
            check_channel_name(channel, limit)
        except ReplyError:
            return (
                "channel: not a valid name (no control characters; a namespace and a name "
                'on both sides of ":")'
            )
        return ""

    async def publish(self, request: PublishRequest) -> dict[str, Any]:
        if not request.channel:
            raise _required("channel")
        result = await self.node.publish(
            request.channel,
            _payload(request.data, request.b64data),
            skip_history=request.skip_history,
            tags=request.tags,
            idempotency_key=request.idempotency_key,
            key=request.key,
            # Centrifugo's flag: asks for deltas; without it, the namespace's delta_publish.
            delta=request.delta or None,
        )
        if not result.offset and not result.epoch:
            return {}
        return {"offset": result.offset, "epoch": result.epoch}

    async def broadcast(self, request: BroadcastRequest) -> dict[str, Any]:
        if not request.channels:
            raise _required("channels")
        data = _payload(request.data, request.b64data)
        responses: list[dict[str, Any]] = []
        for channel in request.channels:
            try:
                result = await self.publish(
                    PublishRequest(
                        channel=channel,
                        data=data,
                        skip_history=request.skip_history,
                        tags=request.tags,
                        idempotency_key=request.idempotency_key,
                        delta=request.delta,
                        key=request.key,
                    )
                )
                responses.append({"result": result})
            except ReplyError as exc:
                detail = self.channel_detail(channel, exc.error)
                responses.append({"error": _error_dict(_api_error(exc.error), detail)})
            except ApiError as exc:
                responses.append({"error": _error_dict(exc.error, exc.detail)})
            except BrokerUnavailable:
                responses.append({"error": _error_dict(_BROKER_UNAVAILABLE)})
        return {"responses": responses}

    async def subscribe(self, request: SubscribeRequest) -> dict[str, Any]:
        if not request.user or not request.channel:
            raise _required("user" if not request.user else "channel")
        since = request.recover_since
        await self.node.subscribe_user(
            request.user,
            request.channel,
            client=request.client,
            session=request.session,
            info=bytes(request.info),
            data=bytes(request.data),
            since=StreamPosition(since.offset, since.epoch) if since is not None else None,
        )
        return {}

    async def unsubscribe(self, request: UnsubscribeRequest) -> dict[str, Any]:
        if not request.user or not request.channel:
            raise _required("user" if not request.user else "channel")
        await self.node.unsubscribe_user(
            request.user, request.channel, client=request.client, session=request.session
        )
        return {}

    async def disconnect(self, request: DisconnectRequest) -> dict[str, Any]:
        if not request.user:
            raise _required("user")
        disconnect = request.disconnect or _DisconnectObject()
        if not 3000 <= disconnect.code <= 4999:
            raise _bad_request(f"disconnect.code: expected 3000-4999, got {disconnect.code}")
        if len(disconnect.reason.encode()) > 123:
            raise _bad_request("disconnect.reason: longer than 123 bytes")
        await self.node.disconnect_user(
            request.user,
            Disconnect(disconnect.code, disconnect.reason),
            client=request.client,
            session=request.session,
            whitelist=request.whitelist,
        )
        return {}

    async def refresh(self, request: RefreshRequest) -> dict[str, Any]:
        if not request.user:
            raise _required("user")
        await self.node.refresh_user(
            request.user,
            client=request.client,
            session=request.session,
            expire_at=request.expire_at or None,
            expired=request.expired,
            info=bytes(request.info),
        )
        return {}

    async def presence(self, request: ChannelRequest) -> dict[str, Any]:
        options = self._channel_options(request.channel)
        if not options.presence:
            raise ApiError(ApiErrorCode.NOT_AVAILABLE)
        entries = await self.node.presence_of(request.channel)
        return {"presence": entries}

    async def presence_stats(self, request: ChannelRequest) -> dict[str, Any]:
        options = self._channel_options(request.channel)
        if not options.presence:
            raise ApiError(ApiErrorCode.NOT_AVAILABLE)
        clients, users = await self.node.presence_stats(request.channel)
        return {"num_clients": clients, "num_users": users}

    async def history(self, request: HistoryRequest) -> dict[str, Any]:
        options = self._channel_options(request.channel)
        since = (
            StreamPosition(request.since.offset, request.since.epoch)
            if request.since is not None
            else None
        )
        publications, top = await self.node.read_history(
            request.channel, options, limit=request.limit, since=since, reverse=request.reverse
        )
        return {"publications": publications, "epoch": top.epoch, "offset": top.offset}

    async def history_remove(self, request: ChannelRequest) -> dict[str, Any]:
        options = self._channel_options(request.channel)
        if not options.history_enabled:
            raise ApiError(ApiErrorCode.NOT_AVAILABLE)
        await self.node.remove_history(request.channel)
        return {}

    async def channels(self, request: ChannelsRequest) -> dict[str, Any]:
        counts = await self.node.channels(request.pattern)
        return {"channels": {name: {"num_clients": count} for name, count in counts.items()}}

    async def info(self, request: EmptyRequest) -> dict[str, Any]:
        return {"nodes": self.node.known_nodes()}

    async def batch(self, params: bytes) -> list[dict[str, Any]]:
        try:
            request = msgspec.json.decode(params, type=BatchRequest)
        except msgspec.ValidationError as exc:
            raise self._refused("batch", _bad_request(_validation_detail(exc))) from None
        except JSON_INPUT_ERRORS:
            raise self._refused("batch", _bad_request("params: expected a JSON object")) from None

        async def one(command: dict[str, Raw]) -> dict[str, Any]:
            if len(command) != 1:
                detail = "commands: each command is an object with exactly one method"
                return {"error": _error_dict(ApiErrorCode.BAD_REQUEST, detail)}
            ((method, method_params),) = command.items()
            if method == "batch":
                detail = "commands: a batch cannot contain a batch"
                return {"error": _error_dict(ApiErrorCode.BAD_REQUEST, detail)}
            try:
                return {method: await self.call(method, bytes(method_params))}
            except ApiError as exc:
                return {"error": _error_dict(exc.error, exc.detail)}

        if request.parallel:
            return list(await asyncio.gather(*(one(command) for command in request.commands)))
        return [await one(command) for command in request.commands]

    def _channel_options(self, channel: str) -> Any:
        if not channel:
            raise _required("channel")
        try:
            return self.node.rules.options(channel)
        except ReplyError as exc:
            raise ApiError(_api_error(exc.error), self.channel_detail(channel, exc.error)) from None


def _api_error(error: Error) -> Error:
    """Map a client-protocol error to the API's catalog (same codes, API texts)."""
    for candidate in (
        ApiErrorCode.UNKNOWN_CHANNEL,
        ApiErrorCode.BAD_REQUEST,
        ApiErrorCode.NOT_AVAILABLE,
        ApiErrorCode.UNRECOVERABLE_POSITION,
    ):
        if candidate.code == error.code:
            return candidate
    return error


def _error_dict(error: Error, detail: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.temporary:
        result["temporary"] = True
    if detail:
        result["detail"] = detail
    return result


def _validation_detail(exc: msgspec.ValidationError) -> str:
    """``Expected `str`, got `int` - at `$.channel``` -> ``channel: expected str, got int``."""
    text, _, where = str(exc).partition(" - at `$")
    where = where.rstrip("`").lstrip(".") or "params"
    text = text.replace("`", "")
    return f"{where}: {text[:1].lower()}{text[1:]}"


def _with_unknown_fields(detail: str, params: bytes, request_type: type[Struct]) -> str:
    """Add the fields the method does not know, with the closest known name (a misspelling)."""
    try:
        document = msgspec.json.decode(params)
    except JSON_INPUT_ERRORS:
        return detail
    if not isinstance(document, dict):
        return detail
    known = request_type.__struct_fields__
    notes = []
    for name in document:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        notes.append(f"unknown field {str(name)[:64]!r}{hint}")
    return "; ".join([detail, *notes] if detail else notes)


_TRANSPORT_ERROR_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}


class ApiEndpoint:
    """HTTP glue: authentication, body decoding, result shapes, error modes."""

    def __init__(self, node: Node, api_key: str, *, insecure: bool = False) -> None:
        self.api = ServerApi(node)
        self._key = api_key.encode()
        self._insecure = insecure

    def authorized(self, request: HttpRequest) -> bool:
        return self._refusal(request) is None

    def _refusal(self, request: HttpRequest) -> str | None:
        """None when the request may use the API; otherwise what to check, for the 401."""
        if self._insecure:
            return None
        if not self._key:
            return (
                "the server API is closed: the server has no api_key "
                "(set TIDINGS_API_KEY or api_key where it runs)"
            )
        supplied = self._supplied_key(request)
        if supplied is None:
            return "no API key: send it in X-API-Key (or Authorization: apikey KEY)"
        if not hmac.compare_digest(supplied.encode(), self._key):
            return "wrong API key: check the key against the server's api_key (TIDINGS_API_KEY)"
        return None

    @staticmethod
    def _supplied_key(request: HttpRequest) -> str | None:
        supplied = request.header("x-api-key")
        if supplied is None:
            authorization = request.header("authorization")
            if authorization is not None:
                scheme, _, value = authorization.partition(" ")
                if scheme.lower() == "apikey":
                    supplied = value.strip()
        if supplied is None:
            supplied = request.query_value("api_key")
        return supplied

    async def handle(self, request: HttpRequest) -> Response:
        if request.method == "OPTIONS":
            return Response(204, b"", "text/plain", [("allow", "POST, OPTIONS")])
        if request.method != "POST":
            return Response(405, b"", "text/plain", [("allow", "POST")])
        refusal = self._refusal(request)
        if refusal is not None:
            log.info(
                "API call from %s refused: %s",
                request.client,
                refusal,
                extra={"client": request.client, "status": 401},
            )
            return json_response(
                _encode({"error": _error_dict(ApiErrorCode.UNAUTHORIZED, refusal)}), 401
            )
        method = request.path[len("/api") :].strip("/")
        if not method:
            return await self._legacy(request)
        body = request.body.strip() or b"{}"
        try:
            msgspec.json.decode(body, type=dict)
        except JSON_INPUT_ERRORS:
            return _malformed_body()
        transport_mode = (request.header("x-centrifugo-error-mode") or "").lower() == "transport"
        try:
            result = await self.api.call(method, body, headers=request.headers)
        except ApiError as exc:
            error = _error_dict(exc.error, exc.detail)
            if transport_mode:
                status = _TRANSPORT_ERROR_STATUS.get(exc.error.code, 400)
                return json_response(_encode(error), status)
            return json_response(_encode({"error": error}))
        except Exception:
            log.exception("API method %s failed", method)
            return json_response(_encode({"error": _error_dict(ApiErrorCode.INTERNAL)}))
        if method == "batch":
            return json_response(_encode({"replies": result}))
        return json_response(_encode({"result": result}))

    async def _legacy(self, request: HttpRequest) -> Response:
        """``POST /api`` with ``{"method":..,"params":..}`` lines, answered line by line."""
        lines = [line for line in request.body.split(b"\n") if line.strip()]
        if not lines:
            return _malformed_body("the body is empty")
        answers = []
        for line in lines:
            try:
                command = msgspec.json.decode(line, type=LegacyCommand)
            except (msgspec.DecodeError, RecursionError):
                return _malformed_body()
            except msgspec.ValidationError as exc:
                error = _error_dict(ApiErrorCode.BAD_REQUEST, _validation_detail(exc))
                answers.append(_encode({"error": error}))
                continue
            try:
                result = await self.api.call(
                    command.method, bytes(command.params) or b"{}", headers=request.headers
                )
            except ApiError as exc:
                answers.append(_encode({"error": _error_dict(exc.error, exc.detail)}))
                continue
            answers.append(_encode({"result": result}))
        return json_response(b"\n".join(answers))


def _malformed_body(detail: str = "the body is not a JSON object") -> Response:
    """400 for a body that is not JSON at all: a JSON error like every other answer."""
    return json_response(_encode({"error": _error_dict(ApiErrorCode.BAD_REQUEST, detail)}), 400)
