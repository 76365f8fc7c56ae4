"""Routes of every transport but bidirectional WebSocket; :func:`install` wires them.

* ``/connection/http_stream``, ``/connection/sse`` and ``/emulation``: centrifuge-js'
  bidirectional emulation;
* ``/connection/uni_websocket``, ``/connection/uni_sse``, ``/connection/uni_http_stream``:
  the unidirectional Centrifugo transports;
* ``/events``: plain SSE with cursor ids, for an ``EventSource`` without an SDK;
* ``/longpoll``: long polling for ``fetch()``, with the same cursor.

The Centrifugo transports run a :class:`~tidings.session.Session` each, like
WebSocket: they only adapt bytes. ``/events`` and ``/longpoll`` are plain HTTP
for clients without an SDK; they use the node's hub, history and permission
rules directly.

Every endpoint applies the server's origin policy (``origin_allowed``); the
plain-HTTP and emulation endpoints answer CORS from ``cors_allowed_origins``.
Bad input gets a 4xx JSON error ``{"error":{"code":N,"message":..}}`` with the
protocol's code (or, once a stream runs, the protocol's disconnect), and
nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from msgspec import Raw

from tidings.auth import ConnectToken, TokenError
from tidings.channels import ChannelOptions, parse_channel
from tidings.errors import (
    BrokerUnavailable,
    Error,
    ErrorCode,
    HttpErrorCode,
    ProtocolViolation,
    ReplyError,
    token_refusal,
)
from tidings.hooks import ConnectContext, Context, Headers, PublishContext, SubscribeContext
from tidings.node import Node
from tidings.protocol import protobuf
from tidings.protocol.codec import JSON_INPUT_ERRORS, compact_raw, decode_connect_request, raw
from tidings.protocol.cursor import CursorError, parse_cursor
from tidings.protocol.messages import ClientInfo, ConnectRequest, Publication, StreamPosition
from tidings.protocol.wire import (
    END_CHUNK,
    HTTP_STREAM_WIRE,
    PROTOBUF_HTTP_STREAM_WIRE,
    SSE_WIRE,
    UNI_HTTP_STREAM_WIRE,
    UNI_SSE_WIRE,
    UNI_WEBSOCKET_WIRE,
    WireFormat,
    chunk,
)
from tidings.server.exchange import HttpRequest, ResponseStream
from tidings.server.feeds.events import EventsFeeds, EventsMember
from tidings.server.feeds.longpoll import LongPollWaiter
from tidings.server.http import RefusalLog, Request, Response, Router, json_response
from tidings.server.origins import OriginPolicy
from tidings.server.upgrades import WebSocketUpgrades, refuse
from tidings.session import RequestInfo, Session
from tidings.transports.http_stream import NO_CACHE_HEADERS, StreamTransport
from tidings.transports.sse import OPENING, SSE_HEADERS
from tidings.transports.uni_websocket import UniWebSocketTransport

log = logging.getLogger("tidings.transports")

TOKEN_COOKIE = "tidings_token"
"""Cookie that may carry the connection token of ``/events`` and ``/longpoll``."""

SSE_RETRY_MS = 1000
"""Reconnection delay suggested to ``EventSource`` (its ``retry:`` field)."""

CHUNKED = ("transfer-encoding", "chunked")
JSON_STREAM_HEADERS = [("content-type", "application/json"), *NO_CACHE_HEADERS]
PROTOBUF_STREAM_HEADERS = [("content-type", "application/octet-stream"), *NO_CACHE_HEADERS]

ERROR_STATUS = {100: 503, 101: 401, 102: 404, 103: 403, 106: 400, 107: 400, 108: 400, 109: 401}
"""HTTP status of each protocol error code a plain-HTTP endpoint can answer with."""


def _protobuf_body(request: HttpRequest) -> bool:
    """The body is Protobuf (centrifuge-js sends ``application/octet-stream``, as Centrifugo
    reads it); anything else is JSON."""
    content_type = request.header("content-type") or ""
    return content_type.split(";", 1)[0].strip().lower() == "application/octet-stream"


def request_info(request: HttpRequest) -> RequestInfo:
    """What the application's handlers may know of the opening request."""
    return RequestInfo.from_pairs(request.client, request.headers)


def session_request(node: Node, request: HttpRequest) -> RequestInfo:
    """What a session keeps of its opening request: its headers and cookies only when
    a handler may read them, since a copy costs an idle connection about 800 bytes
    (a sixth of it) and a server without handlers never looks at it."""
    if node.hooks.reads_requests:
        return request_info(request)
    return RequestInfo(request.client)


class HttpError(Exception):
    """Refuse a request with a status and a protocol error (a JSON body)."""

    def __init__(
        self,
        status: int,
        error: Error,
        headers: Sequence[tuple[str, str]] = (),
        *,
        logged: bool = False,
    ) -> None:
        super().__init__(f"{status} {error.code} {error.message}")
        self.status = status
        self.error = error
        self.headers = list(headers)
        self.logged = logged

    @classmethod
    def from_reply(cls, exc: ReplyError) -> HttpError:
        return cls(ERROR_STATUS.get(exc.error.code, 400), exc.error)


def error_response(status: int, error: Error, headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = b'{"error":{"code":%d,"message":%b}}' % (error.code, msgspec.json.encode(error.message))
    response = json_response(body, status)
    response.headers.extend(headers)
    return response


class EmulationRequest(msgspec.Struct):
    """``POST /emulation`` body: the commands travel as a JSON *string* (docs/protocol.md
    section 8)."""

    session: str
    node: str = ""
    data: str = ""


class LongPollPublish(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    data: Raw


_emulation_decoder = msgspec.json.Decoder(EmulationRequest)
_publish_decoder = msgspec.json.Decoder(LongPollPublish)


class Cors:
    """CORS headers from ``cors_allowed_origins`` (default: ``allowed_origins``).

    ``*`` answers ``Access-Control-Allow-Origin: *`` and is never combined with
    credentials (the configuration refuses that pair); with credentials the
    page's own origin is echoed, with ``Vary: Origin``.
    """

    def __init__(self, origins: list[str], credentials: bool) -> None:
        self.policy = OriginPolicy(origins) if origins else None
        self.credentials = credentials

    def headers(self, request: HttpRequest) -> list[tuple[str, str]]:
        origin = request.header("origin")
        policy = self.policy
        if origin is None or policy is None or not policy.allows(origin, request.header("host")):
            return []
        if policy.allow_all and not self.credentials:
            return [("access-control-allow-origin", "*")]
        headers = [("access-control-allow-origin", origin), ("vary", "origin")]
        if self.credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return headers

    def preflight(self, request: HttpRequest, methods: str) -> Response:
        headers = self.headers(request)
        if headers:
            headers += [
                ("access-control-allow-methods", methods),
                ("access-control-allow-headers", "content-type, authorization, last-event-id"),
                ("access-control-max-age", "300"),
            ]
        return Response(204, b"", "text/plain", headers)


Handler = Callable[[HttpRequest], Awaitable[Response | None]]

C = TypeVar("C", bound=Context)


class HttpIdentity:
    """Who a plain-HTTP request (``/events``, ``/longpoll``) speaks for."""

    __slots__ = ("expire_at", "granted", "info", "request", "transport", "user")

    def __init__(self, request: HttpRequest, transport: str, token: ConnectToken | None) -> None:
        self.request = request
        self.transport = transport
        self.user = token.user if token is not None else ""
        self.info = token.info if token is not None else b""
        self.expire_at = token.expire_at if token is not None else None
        self.granted: set[str] = set()
        if token is not None:
            self.granted.update(token.channels)
            self.granted.update(token.subs)

    def context(self, kind: type[C], **fields: Any) -> C:
        info = request_info(self.request)
        return kind(
            client="",
            user=self.user,
            transport=self.transport,
            remote_addr=info.remote,
            headers=Headers(info.headers),
            cookies=info.cookies,
            raw_info=self.info,
            **fields,
        )


class TransportRoutes:
    """The handlers; one instance per server, holding the ``/events`` feeds and poll waiters."""

    def __init__(self, node: Node, upgrades: WebSocketUpgrades, refusals: RefusalLog) -> None:
        self.node = node
        self.upgrades = upgrades
        self.refusals = refusals
        self.config = config = node.config
        self.cors = Cors(
            config.cors_allowed_origins or config.allowed_origins, config.cors_allow_credentials
        )
        self.feeds = EventsFeeds(self.node)
        self.waiters: set[LongPollWaiter] = set()
        self._heartbeat: asyncio.TimerHandle | None = None
        self._closing = False

    def install(self, router: Router) -> None:
        """Add every non-WebSocket transport's routes (and ``uni_websocket``) to ``router``."""
        route, guard = router.route, self.guard
        route("/connection/http_stream", guard("POST", self.http_stream))
        route("/connection/sse", guard("GET, POST", self.sse))
        route("/emulation", guard("POST", self.emulation))
        route("/connection/uni_http_stream", guard("POST", self.uni_http_stream))
        route("/connection/uni_sse", guard("GET, POST", self.uni_sse))
        route("/connection/uni_websocket", guard("GET", self.expect_upgrade))
        router.upgrade("/connection/uni_websocket", self.uni_websocket_upgrade)
        route("/events", guard("GET", self.events))
        route("/longpoll", guard("GET, POST", self.longpoll))

    @staticmethod
    def error(status: int, error: Error, headers: Sequence[tuple[str, str]] = ()) -> Response:
        return error_response(status, error, headers)

    def close(self) -> None:
        """Server shutdown: end every ``/events`` stream, answer every waiting long poll."""
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self.feeds.close()
        for waiter in list(self.waiters):
            waiter.finish()

    # ------------------------------------------------------------------ plumbing

    def guard(self, methods: str, handler: Handler) -> Handler:
        """Origin policy, OPTIONS preflight, method check, then JSON errors for refusals."""
        allowed = {method.strip() for method in methods.split(",")}
        preflight_methods = f"{methods}, OPTIONS"

        async def guarded(request: HttpRequest) -> Response | None:
            if not self.upgrades.origin_allowed(request):
                log.info(
                    "%s from %s refused: origin %r not allowed",
                    request.path,
                    request.client,
                    request.header("origin"),
                )
                return error_response(403, HttpErrorCode.ORIGIN_NOT_ALLOWED)
            if request.method == "OPTIONS":
                return self.cors.preflight(request, preflight_methods)
            cors = self.cors.headers(request)
            if request.method not in allowed:
                return error_response(
                    405, HttpErrorCode.METHOD_NOT_ALLOWED, [("allow", methods), *cors]
                )
            try:
                return await handler(request)
            except HttpError as exc:
                if not exc.logged:
                    self.refusals.note(
                        exc.status, f"{request.path}: {exc.error.message}", request.client
                    )
                return error_response(exc.status, exc.error, [*exc.headers, *cors])
            except ReplyError as exc:
                refusal = HttpError.from_reply(exc)
                self.refusals.note(
                    refusal.status, f"{request.path}: {refusal.error.message}", request.client
                )
                return error_response(refusal.status, refusal.error, cors)
            except BrokerUnavailable as exc:
                log.warning("%s %s: %s", request.method, request.path, exc)
                return error_response(503, ErrorCode.INTERNAL, cors)

        return guarded

    def _stream(self, request: HttpRequest, headers: list[tuple[str, str]]) -> ResponseStream:
        """Start a long-lived response whose body the wire formats chunk themselves."""
        return request.start_stream(
            200, [*headers, *self.cors.headers(request), CHUNKED], chunked=False
        )

    # ------------------------------------------------------------------ Centrifugo transports

    def _open_session(
        self,
        request: HttpRequest,
        headers: list[tuple[str, str]],
        wire: WireFormat,
        *,
        name: str,
        unidirectional: bool,
        opening: bytes = b"",
    ) -> Session:
        stream = self._stream(request, headers)
        if opening:
            stream.write(opening)
        transport = StreamTransport(
            stream, wire, name=name, unidirectional=unidirectional, emulation=not unidirectional
        )
        session = Session(self.node, transport, session_request(self.node, request))
        session.session_id = str(uuid.uuid4())
        transport.attach(session, self.config.write_buffer_limit)
        if not unidirectional:
            node = self.node
            node.register_emulation(session)
            transport.on_end = lambda: node.unregister_emulation(session)
        return session

    async def http_stream(self, request: HttpRequest) -> Response | None:
        """``POST /connection/http_stream``: the connect command in the body, replies streamed.

        ``Content-Type: application/octet-stream`` makes it a Protobuf session, as
        centrifuge-js sends it with ``protocol: 'protobuf'`` (docs/protocol.md, "Protobuf").
        """
        wire: WireFormat = HTTP_STREAM_WIRE
        headers = JSON_STREAM_HEADERS
        if _protobuf_body(request):
            headers, wire = PROTOBUF_STREAM_HEADERS, PROTOBUF_HTTP_STREAM_WIRE
        session = self._open_session(
            request, headers, wire, name="http_stream", unidirectional=False
        )
        session.handle_frame(request.body)
        return None

    async def sse(self, request: HttpRequest) -> Response | None:
        """``GET /connection/sse?cf_connect=<commands>`` (or ``POST`` with them as the body)."""
        commands = self._commands(request, required=True)
        session = self._open_session(
            request, SSE_HEADERS, SSE_WIRE, name="sse", unidirectional=False, opening=OPENING
        )
        session.handle_frame(commands)
        return None

    async def emulation(self, request: HttpRequest) -> Response | None:
        """``POST /emulation``: commands for an emulation session; replies go down its stream.

        A JSON body carries JSON commands as a string; an ``application/octet-stream``
        body is a Protobuf ``EmulationRequest`` whose ``data`` holds Protobuf commands.
        Either reaches the session as one frame, which it decodes with its own codec
        (Protobuf bytes posted for a JSON session are a protocol violation there).
        """
        body: EmulationRequest | protobuf.EmulationRequest
        commands: str | bytes
        try:
            # No EmulationRequest starts with "{" (field 15 as a group): a JSON body sent
            # as octet-stream, as some HTTP clients label any bytes, is still read as JSON.
            if _protobuf_body(request) and not request.body.startswith(b"{"):
                body = protobuf.decode_emulation_request(request.body)
                if not body.session:  # required, as the JSON form's decoder requires it
                    raise ProtocolViolation("emulation request without a session")
                commands = bytes(body.data)
            else:
                body = _emulation_decoder.decode(request.body)
                commands = body.data
        except (ProtocolViolation, *JSON_INPUT_ERRORS):
            raise HttpError(400, ErrorCode.BAD_REQUEST) from None
        if body.node != self.node.id:
            # The stream lives on another node (no sticky routing, or another worker):
            # the broker carries the commands there. A node nobody has heard of is
            # gone: 404 makes centrifuge-js reconnect.
            if not self.node.knows_node(body.node):
                raise HttpError(404, HttpErrorCode.NOT_FOUND)
            await self.node.forward_emulation(body.node, body.session, commands)
            return Response(204, b"", "text/plain", self.cors.headers(request))
        session = self.node.emulation_sessions.get(body.session)
        if session is not None:
            session.handle_frame(commands if isinstance(commands, bytes) else commands.encode())
        # An unknown session is answered 204 too: its stream has ended already, which
        # is what tells the client (centrifuge-js reads 404 as "node gone" instead).
        return Response(204, b"", "text/plain", self.cors.headers(request))

    @staticmethod
    def _commands(request: HttpRequest, *, required: bool) -> bytes:
        if request.method == "POST":
            return request.body
        value = request.query_value("cf_connect")
        if value is None:
            if required:
                raise HttpError(400, ErrorCode.BAD_REQUEST)
            return b"{}"
        return value.encode()

    @staticmethod
    def _connect_request(body: bytes) -> ConnectRequest:
        try:
            return decode_connect_request(body)
        except ProtocolViolation:
            raise HttpError(400, ErrorCode.BAD_REQUEST) from None

    async def uni_http_stream(self, request: HttpRequest) -> Response | None:
        """``POST /connection/uni_http_stream``: a ConnectRequest body; bare pushes as lines."""
        connect = self._connect_request(request.body)
        session = self._open_session(
            request,
            JSON_STREAM_HEADERS,
            UNI_HTTP_STREAM_WIRE,
            name="uni_http_stream",
            unidirectional=True,
        )
        self.node.spawn(session.connect_unidirectional(connect))
        return None

    async def uni_sse(self, request: HttpRequest) -> Response | None:
        """``GET /connection/uni_sse?cf_connect=<ConnectRequest>`` (missing: ``{}``) or POST."""
        connect = self._connect_request(self._commands(request, required=False))
        session = self._open_session(
            request, SSE_HEADERS, UNI_SSE_WIRE, name="uni_sse", unidirectional=True, opening=OPENING
        )
        self.node.spawn(session.connect_unidirectional(connect))
        return None

    async def expect_upgrade(self, request: HttpRequest) -> Response | None:
        raise HttpError(400, ErrorCode.BAD_REQUEST)

    def uni_websocket_upgrade(
        self, request: Request, transport: asyncio.Transport, rest: bytes
    ) -> None:
        """``/connection/uni_websocket``: ConnectRequest in ``cf_connect`` or the first message."""
        upgrades = self.upgrades
        if not upgrades.origin_allowed(request):
            log.info("uni_websocket from %s refused: origin not allowed", request.client)
            refuse(transport, 403, HttpErrorCode.ORIGIN_NOT_ALLOWED)
            return
        opened = upgrades.handshake(request, transport)
        if opened is None:
            return
        connection = upgrades.accept(
            opened,
            transport,
            request=request,
            wire=UNI_WEBSOCKET_WIRE,
            name="uni_websocket",
            unidirectional=True,
        )
        session = Session(
            self.node, UniWebSocketTransport(connection), session_request(self.node, request)
        )
        session.session_id = str(uuid.uuid4())
        connection.session = session

        def ignore(message: bytes) -> None:
            """After the ConnectRequest, whatever the client sends is ignored (docs/protocol.md
            section 8)."""

        def first_message(message: bytes) -> None:
            connection.on_text = ignore
            self.connect_unidirectional(session, message)

        cf_connect = request.query_value("cf_connect")
        if cf_connect is not None:
            connection.on_text = ignore
            self.connect_unidirectional(session, cf_connect.encode())
        else:
            connection.on_text = first_message
        if rest:
            connection.data_received(rest)

    def connect_unidirectional(self, session: Session, body: bytes) -> None:
        try:
            request = decode_connect_request(body)
        except ProtocolViolation as violation:
            log.info("uni_websocket from %s: %s", session.remote, violation)
            session.close(violation.disconnect)
            return
        self.node.spawn(session.connect_unidirectional(request))

    # ------------------------------------------------------------------ plain HTTP: shared

    async def _credentials(self, request: HttpRequest, transport: str) -> HttpIdentity:
        """Who is asking: the connection token from ``Authorization: Bearer``, ``?token=``
        or the cookie, then the application's ``on_connect`` (which may authenticate a
        request that has no token, from its cookies)."""
        token_text = ""
        authorization = request.header("authorization") or ""
        if authorization[:7].lower() == "bearer ":
            token_text = authorization[7:].strip()
        token_text = (
            token_text or request.query_value("token") or request.cookie(TOKEN_COOKIE) or ""
        )
        challenge = [("www-authenticate", 'Bearer realm="tidings"')]
        hooks = self.node.hooks
        token: ConnectToken | None = None
        if token_text:
            try:
                token = await self.node.verify_connect_token(token_text)
            except TokenError as exc:
                log.info("%s from %s refused: %s", request.path, request.client, exc.reason)
                refusal = token_refusal("http", expired=exc.expired)
                assert isinstance(refusal, Error)
                raise HttpError(401, refusal, challenge, logged=True) from None
        identity = HttpIdentity(request, transport, token)
        if hooks.handles("connect"):
            answer = await hooks.connect(identity.context(ConnectContext))
            if answer is not None:
                identity.user = answer.user
                if answer.info:
                    identity.info = answer.info
                identity.granted.update(answer.channels)
                if answer.expire_at is not None:
                    identity.expire_at = answer.expire_at
                return identity
        if token is None and not self.config.allow_anonymous:
            raise HttpError(401, ErrorCode.UNAUTHORIZED, challenge)
        return identity

    async def _channels(self, request: HttpRequest, identity: HttpIdentity) -> list[str]:
        """The ``channel`` parameters (default: the granted channels), each one permitted.

        A channel the token's ``channels``/``subs`` claims (or ``on_connect``) name is
        granted like a server-side subscription; any other goes to the channel's
        ``on_subscribe`` handler, or must pass the namespace's subscribe rules for this
        user (102 unknown namespace, 103 forbidden).
        """
        granted = identity.granted
        requested = request.query.get("channel") or sorted(granted)
        channels = list(dict.fromkeys(requested))
        if not channels or "" in channels:
            raise HttpError(400, ErrorCode.BAD_REQUEST)
        if len(channels) > self.config.client_channel_limit:
            raise HttpError(400, ErrorCode.LIMIT_EXCEEDED)
        for channel in channels:
            await self._may_subscribe(identity, channel)
        return channels

    async def _may_subscribe(self, identity: HttpIdentity, channel: str) -> None:
        rules = self.node.rules
        hooks = self.node.hooks
        if channel in identity.granted:
            rules.options(channel)
        elif hooks.handles("subscribe", channel):
            rules.options(channel)
            allowed = parse_channel(channel).allowed_users
            if allowed is not None and identity.user not in allowed:
                raise ReplyError(ErrorCode.PERMISSION_DENIED)
            await hooks.subscribe(identity.context(SubscribeContext, channel=channel))
        else:
            rules.check_subscribe(channel, identity.user, has_token=False)

    def _cursor(self, text: str | None) -> dict[str, StreamPosition]:
        if not text:
            return {}
        try:
            return parse_cursor(text, max_channels=self.config.client_channel_limit)
        except CursorError as exc:
            log.info("bad cursor refused: %s", exc)
            raise HttpError(400, ErrorCode.BAD_REQUEST, logged=True) from None

    # ------------------------------------------------------------------ /events

    async def events(self, request: HttpRequest) -> Response | None:
        """``GET /events``: publications as SSE events with cursor ids (see transports.events)."""
        identity = await self._credentials(request, "events")
        channels = await self._channels(request, identity)
        last_event_id = request.header("last-event-id")
        cursor = self._cursor(
            last_event_id if last_event_id is not None else request.query_value("last_event_id")
        )
        rules = self.node.rules
        history = frozenset(c for c in channels if _resumable(rules.options(c)))
        feed = await self.feeds.feed(frozenset(channels), history)
        stream = self._stream(request, SSE_HEADERS)
        stream.write(chunk(b"\r\nretry: %d\n\n" % SSE_RETRY_MS))
        member = EventsMember(stream)

        def ended() -> None:
            member.end()
            feed.remove(member)

        stream.on_close = ended
        if identity.expire_at is not None:
            delay = identity.expire_at - time.time() + self.config.expired_close_delay
            member.expiry = asyncio.get_running_loop().call_later(max(0.0, delay), member.end)
        self._start_heartbeat()
        try:
            await feed.join(member, cursor)
        except Exception as exc:
            log.warning("/events catch-up for %s failed: %s", request.client, exc)
            member.end()
        return None

    def _start_heartbeat(self) -> None:
        interval = self.config.sse_heartbeat_interval
        if interval > 0 and self._heartbeat is None and not self._closing:
            self._heartbeat = asyncio.get_running_loop().call_later(interval, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        self.feeds.heartbeat()
        if self.feeds.feeds:
            self._start_heartbeat()

    # ------------------------------------------------------------------ /longpoll

    async def longpoll(self, request: HttpRequest) -> Response | None:
        """``GET /longpoll?channel=..&cursor=..`` waits; ``POST /longpoll`` publishes."""
        if request.method == "POST":
            return await self._longpoll_publish(request)
        identity = await self._credentials(request, "longpoll")
        channels = await self._channels(request, identity)
        rules = self.node.rules
        for channel in channels:
            if not _resumable(rules.options(channel)):
                raise HttpError(400, ErrorCode.NOT_AVAILABLE)  # nothing to resume from
        cursor = self._cursor(request.query_value("cursor"))
        headers = [*NO_CACHE_HEADERS, *self.cors.headers(request)]
        waiter = LongPollWaiter(self.node, channels)
        self.waiters.add(waiter)
        try:
            await waiter.register()
            await waiter.read_history(cursor)
            if waiter.has_answer or self._closing:
                return Response(200, waiter.body(), "application/json", headers)
            # Headers now, body when there is one: the stream's end is how a client
            # that gives up is noticed, so its hub subscription goes at once.
            stream = self._stream(request, JSON_STREAM_HEADERS)
            stream.on_close = waiter.finish
            waiter.wait_live()
            await asyncio.wait({waiter.done}, timeout=self.config.longpoll_timeout)
            waiter.release()
            if not stream.closed:
                stream.write(chunk(waiter.body()))
                stream.write(END_CHUNK)
                stream.on_close = None
                stream.end()
            return None
        finally:
            waiter.release()
            self.waiters.discard(waiter)

    async def _longpoll_publish(self, request: HttpRequest) -> Response:
        """``POST /longpoll`` with ``{"channel":..,"data":..}``, where clients may publish.

        The poster counts as a subscriber when it may subscribe to the channel
        (``allow_publish_for_subscriber``), as a long-poll reader of it would be.
        """
        identity = await self._credentials(request, "longpoll")
        try:
            body = _publish_decoder.decode(request.body)
        except JSON_INPUT_ERRORS:
            raise HttpError(400, ErrorCode.BAD_REQUEST) from None
        channel = body.channel
        if not channel or not len(body.data):
            raise HttpError(400, ErrorCode.BAD_REQUEST)
        user = identity.user
        rules = self.node.rules
        hooks = self.node.hooks
        data = compact_raw(bytes(body.data))
        if hooks.handles("publish", channel):
            options = rules.options(channel)
            context = identity.context(PublishContext, channel=channel)
            data = await hooks.publish(context, data) or data
        else:
            subscribed = channel in identity.granted
            if not subscribed:
                try:
                    await self._may_subscribe(identity, channel)
                    subscribed = True
                except ReplyError as exc:
                    if exc.error.code != ErrorCode.PERMISSION_DENIED.code:
                        raise
            options = rules.check_publish(channel, user, subscribed=subscribed)
        publication = Publication(data=Raw(data), info=ClientInfo(user, "", raw(identity.info)))
        position = await self.node.publish_publication(channel, publication, options)
        result = b"{}"
        if position is not None and position.offset:
            result = msgspec.json.encode({"offset": position.offset, "epoch": position.epoch})
        return Response(200, result, "application/json", self.cors.headers(request))


def _resumable(options: ChannelOptions) -> bool:
    """A channel a cursor can resume: one with history, or a map that keeps its changes."""
    if options.map is not None and options.is_map:
        return options.map.has_stream
    return options.history_enabled
