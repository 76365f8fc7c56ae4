"""The server HTTP API (``POST /api/<method>``), shaped so PyPI ``cent`` works unchanged.

docs/protocol.md section 9: key in ``X-API-Key``, ``Authorization: apikey <key>`` or
``?api_key=``; 401 with an empty body otherwise. Answers are HTTP 200 with
``{"result":...}`` or ``{"error":{...}}``, unless the request asks for the
transport error mode. Channel permissions do not apply: this is the backend
speaking. Malformed input gets a JSON error, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from msgspec import Raw, Struct

from tidings.errors import ApiErrorCode, BrokerUnavailable, Disconnect, Error, ErrorCode, ReplyError
from tidings.node import Node
from tidings.protocol.codec import JSON_INPUT_ERRORS, compact_raw
from tidings.protocol.messages import NO_DATA, StreamPosition
from tidings.server.http import Request, Response, json_response, text_response

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


class BroadcastRequest(Struct):
    channels: list[str] = []
    data: Raw = NO_DATA
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""


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
    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


def _bad_request() -> ApiError:
    return ApiError(ApiErrorCode.BAD_REQUEST)


# --------------------------------------------------------------------------- methods


def _payload(data: Raw, b64data: str) -> Raw:
    if len(data):
        try:
            return Raw(compact_raw(bytes(data)))
        except RecursionError:
            raise _bad_request() from None
    if b64data:
        try:
            decoded = base64.b64decode(b64data, validate=True)
            msgspec.json.decode(decoded)
        except (binascii.Error, ValueError, *JSON_INPUT_ERRORS):
            raise _bad_request() from None
        return Raw(compact_raw(decoded))
    raise _bad_request()


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

    async def call(self, method: str, params: bytes) -> Any:
        """Run one method on its JSON params (bytes, decoded once); raises :class:`ApiError`.

        Params are decoded straight into the method's typed request, so a
        publication's ``data`` stays the raw JSON text it arrived as.
        """
        if method == "batch":
            return await self.batch(params)
        entry = self._methods.get(method)
        if entry is None:
            raise ApiError(ApiErrorCode.NOT_FOUND)
        request_type, handler = entry
        try:
            request = msgspec.json.decode(params.strip() or b"{}", type=request_type)
        except JSON_INPUT_ERRORS:
            raise _bad_request() from None
        try:
            return await handler(request)
        except ReplyError as exc:
            raise ApiError(_api_error(exc.error)) from None
        except BrokerUnavailable as exc:
            log.warning("API %s failed: %s", method, exc)
            raise ApiError(_BROKER_UNAVAILABLE) from None

    async def publish(self, request: PublishRequest) -> dict[str, Any]:
        if not request.channel:
            raise _bad_request()
        result = await self.node.publish(
            request.channel,
            _payload(request.data, request.b64data),
            skip_history=request.skip_history,
            tags=request.tags,
            idempotency_key=request.idempotency_key,
        )
        if not result.offset and not result.epoch:
            return {}
        return {"offset": result.offset, "epoch": result.epoch}

    async def broadcast(self, request: BroadcastRequest) -> dict[str, Any]:
        if not request.channels:
            raise _bad_request()
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
                    )
                )
                responses.append({"result": result})
            except ReplyError as exc:
                responses.append({"error": _error_dict(_api_error(exc.error))})
            except ApiError as exc:
                responses.append({"error": _error_dict(exc.error)})
            except BrokerUnavailable:
                responses.append({"error": _error_dict(_BROKER_UNAVAILABLE)})
        return {"responses": responses}

    async def subscribe(self, request: SubscribeRequest) -> dict[str, Any]:
        if not request.user or not request.channel:
            raise _bad_request()
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
            raise _bad_request()
        await self.node.unsubscribe_user(
            request.user, request.channel, client=request.client, session=request.session
        )
        return {}

    async def disconnect(self, request: DisconnectRequest) -> dict[str, Any]:
        if not request.user:
            raise _bad_request()
        disconnect = request.disconnect or _DisconnectObject()
        if not 3000 <= disconnect.code <= 4999 or len(disconnect.reason.encode()) > 123:
            raise _bad_request()
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
            raise _bad_request()
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
        except JSON_INPUT_ERRORS:
            raise _bad_request() from None

        async def one(command: dict[str, Raw]) -> dict[str, Any]:
            if len(command) != 1:
                return {"error": _error_dict(ApiErrorCode.BAD_REQUEST)}
            ((method, method_params),) = command.items()
            if method == "batch":
                return {"error": _error_dict(ApiErrorCode.BAD_REQUEST)}
            try:
                return {method: await self.call(method, bytes(method_params))}
            except ApiError as exc:
                return {"error": _error_dict(exc.error)}

        if request.parallel:
            return list(await asyncio.gather(*(one(command) for command in request.commands)))
        return [await one(command) for command in request.commands]

    def _channel_options(self, channel: str) -> Any:
        if not channel:
            raise _bad_request()
        try:
            return self.node.rules.options(channel)
        except ReplyError as exc:
            raise ApiError(_api_error(exc.error)) from None


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


def _error_dict(error: Error) -> dict[str, Any]:
    result: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.temporary:
        result["temporary"] = True
    return result


_TRANSPORT_ERROR_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}


class ApiEndpoint:
    """HTTP glue: authentication, body decoding, result shapes, error modes."""

    def __init__(self, node: Node, api_key: str, *, insecure: bool = False) -> None:
        self.api = ServerApi(node)
        self._key = api_key.encode()
        self._insecure = insecure

    def authorized(self, request: Request) -> bool:
        if self._insecure:
            return True
        if not self._key:
            return False
        supplied = request.header("x-api-key")
        if supplied is None:
            authorization = request.header("authorization")
            if authorization is not None:
                scheme, _, value = authorization.partition(" ")
                if scheme.lower() == "apikey":
                    supplied = value.strip()
        if supplied is None:
            supplied = request.query_value("api_key")
        return supplied is not None and hmac.compare_digest(supplied.encode(), self._key)

    async def handle(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(204, b"", "text/plain", [("allow", "POST, OPTIONS")])
        if request.method != "POST":
            return Response(405, b"", "text/plain", [("allow", "POST")])
        if not self.authorized(request):
            log.info("API call from %s refused: bad or missing key", request.client)
            return Response(401, b"", "text/plain")
        method = request.path[len("/api") :].strip("/")
        if not method:
            return await self._legacy(request)
        body = request.body.strip() or b"{}"
        try:
            msgspec.json.decode(body, type=dict)
        except JSON_INPUT_ERRORS:
            return text_response("malformed JSON body", 400)
        transport_mode = (request.header("x-centrifugo-error-mode") or "").lower() == "transport"
        try:
            result = await self.api.call(method, body)
        except ApiError as exc:
            if transport_mode:
                status = _TRANSPORT_ERROR_STATUS.get(exc.error.code, 400)
                return json_response(_encode(_error_dict(exc.error)), status)
            return json_response(_encode({"error": _error_dict(exc.error)}))
        except Exception:
            log.exception("API method %s failed", method)
            return json_response(_encode({"error": _error_dict(ApiErrorCode.INTERNAL)}))
        if method == "batch":
            return json_response(_encode({"replies": result}))
        return json_response(_encode({"result": result}))

    async def _legacy(self, request: Request) -> Response:
        """``POST /api`` with ``{"method":..,"params":..}`` lines, answered line by line."""
        lines = [line for line in request.body.split(b"\n") if line.strip()]
        if not lines:
            return text_response("empty body", 400)
        answers = []
        for line in lines:
            try:
                command = msgspec.json.decode(line, type=LegacyCommand)
            except (msgspec.DecodeError, RecursionError):
                return text_response("malformed JSON body", 400)
            except msgspec.ValidationError:
                answers.append(_encode({"error": _error_dict(ApiErrorCode.BAD_REQUEST)}))
                continue
            try:
                result = await self.api.call(command.method, bytes(command.params) or b"{}")
            except ApiError as exc:
                answers.append(_encode({"error": _error_dict(exc.error)}))
                continue
            answers.append(_encode({"result": result}))
        return json_response(b"\n".join(answers))
