"""Calling the application's handlers: patterns, validation, timeouts, errors, encoding.

:class:`Handlers` implements :class:`tidings.hooks.ApplicationHooks` for a
:class:`tidings.Tidings` application. Every call goes through one place
(:meth:`Handlers._call`), which turns whatever a handler does into the
protocol's answer:

* a :class:`~tidings.hooks.ClientError` -> that error reply (the connection
  carries on); a :class:`~tidings.hooks.ClientDisconnect` -> that disconnect;
* any other exception, a run past ``handler_timeout``, or a return value that
  cannot be encoded as JSON -> error 100 for that command only, logged once with
  its traceback; no invalid JSON ever reaches a client.

Data a client sends is validated against the handler's annotation (a
``msgspec.Struct``, a dataclass, a ``TypedDict``, a pydantic model, or any
type msgspec understands) and arrives decoded; an invalid payload is error 107
naming the first bad field. Channel handlers match glob patterns (``chat:*``),
first registered first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from tidings.errors import Disconnect, DisconnectError, Error, ErrorCode, ReplyError
from tidings.hooks import (
    ClientDisconnect,
    ClientError,
    ConnectAnswer,
    ConnectContext,
    ConnectResult,
    DisconnectContext,
    MessageContext,
    PublishContext,
    RefreshContext,
    RPCContext,
    SubscribeAnswer,
    SubscribeContext,
    SubscribeResult,
)
from tidings.tracing import Tracing

log = logging.getLogger("tidings.handlers")

EVENTS = (
    "connect",
    "refresh",
    "subscribe",
    "sub_refresh",
    "publish",
    "rpc",
    "message",
    "disconnect",
)

Handler = Callable[..., Awaitable[Any]]
Observer = Callable[[str, float, str], None]
"""Called after each handler call with ``(event, seconds, outcome)`` (metrics)."""

MAX_DETAIL = 160
"""Longest validation message sent to a client (the log has the whole of it)."""


# --------------------------------------------------------------------------- validation


def _pydantic_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_validate_json")


def _encode_hook(value: Any) -> Any:
    """What msgspec cannot encode natively: pydantic models (and anything with ``model_dump``)."""
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_json_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)


def encode_json(value: Any) -> bytes:
    """JSON for anything a handler may return: dicts, lists, Structs, dataclasses, models."""
    return _json_encoder.encode(value)


class Validator:
    """Decodes client JSON into one annotation, naming the first bad field on failure."""

    __slots__ = ("_decode", "annotation")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        if annotation is inspect.Parameter.empty or annotation is Any:
            self._decode: Callable[[bytes], Any] = msgspec.json.decode
        elif _pydantic_model(annotation):
            self._decode = annotation.model_validate_json
        else:
            try:
                self._decode = msgspec.json.Decoder(annotation).decode
            except TypeError as exc:
                raise TypeError(f"cannot validate JSON into {annotation!r}: {exc}") from None

    def __call__(self, data: bytes) -> Any:
        """The decoded value; :class:`ReplyError` 107 naming the field when it does not fit."""
        try:
            return self._decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ReplyError(_invalid(str(exc))) from None
        except RecursionError:
            raise ReplyError(_invalid("nested too deeply")) from None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ReplyError(_invalid(_pydantic_message(exc))) from None

    def json_schema(self) -> dict[str, Any]:
        """The annotation as JSON Schema (for the AsyncAPI export)."""
        if self.annotation is inspect.Parameter.empty or self.annotation is Any:
            return {}
        if _pydantic_model(self.annotation):
            schema: dict[str, Any] = self.annotation.model_json_schema()
            return schema
        return msgspec.json.schema(self.annotation)


def _invalid(detail: str) -> Error:
    detail = " ".join(detail.split())
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return Error(ErrorCode.BAD_REQUEST.code, f"invalid data: {detail}")


def _pydantic_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "$"
        return f"{first.get('msg', 'invalid')} - at `{where}`"
    return str(exc)


def _data_annotation(function: Handler, what: str) -> Any:
    """The annotation of a handler's second parameter (the data it receives)."""
    parameters = list(inspect.signature(function).parameters.values())
    if len(parameters) < 2:
        raise TypeError(f"{what} handler {function.__qualname__} must take (ctx, data)")
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: no validation, decoded JSON
        hints = {}
    return hints.get(parameters[1].name, inspect.Parameter.empty)


def _span_attributes(args: tuple[Any, ...]) -> dict[str, str]:
    """What a handler span says of its call: the context's client, user and channel."""
    ctx = args[0] if args else None
    attributes = {"tidings.transport": getattr(ctx, "transport", "")}
    for name in ("client", "user", "channel", "method"):
        value = getattr(ctx, name, None)
        if value:
            attributes[f"tidings.{name}"] = str(value)
    return attributes


def _check_async(function: Handler, what: str) -> None:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"{what} handler {function.__qualname__} must be `async def`")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Registered:
    """One handler: its function, and the validator of the data it receives."""

    function: Handler
    validator: Validator | None = None


class Handlers:
    """The application's handlers, called the way the core expects (``ApplicationHooks``)."""

    def __init__(self, timeout: Callable[[], float]) -> None:
        self._timeout = timeout
        self._single: dict[str, Registered] = {}
        self._patterns: dict[str, list[tuple[str, Registered]]] = {
            "subscribe": [],
            "sub_refresh": [],
            "publish": [],
        }
        self.rpcs: dict[str, Registered] = {}
        self.channels: list[tuple[str, Validator]] = []
        self.observers: list[Observer] = []
        self.tracing: Tracing = Tracing()
        """Spans of handler calls when OpenTelemetry is on (the application sets the node's)."""

    # ------------------------------------------------------------------ registration

    def add(self, event: str, function: Handler, name: str = "") -> None:
        """Register ``function`` for ``event`` (``name``: the pattern or RPC method)."""
        _check_async(function, event)
        if event in ("publish", "message"):
            entry = Registered(function, Validator(_data_annotation(function, event)))
        elif event == "rpc":
            entry = Registered(function, Validator(_data_annotation(function, "rpc")))
        else:
            entry = Registered(function)
        if event in self._patterns:
            self._patterns[event].append((name, entry))
        elif event == "rpc":
            if name in self.rpcs:
                raise ValueError(f"RPC method {name!r} already has a handler")
            self.rpcs[name] = entry
        elif event in EVENTS:
            if event in self._single:
                raise ValueError(f"on_{event} is already set")
            self._single[event] = entry
        else:
            raise ValueError(f"unknown event {event!r}")

    def add_channel(self, pattern: str, schema: Any) -> None:
        """A typed channel: every publication into ``pattern`` must fit ``schema``."""
        self.channels.append((pattern, Validator(schema)))

    def patterns(self, event: str) -> list[tuple[str, Registered]]:
        """The ``(pattern, handler)`` pairs of a per-channel event, in registration order."""
        return list(self._patterns[event])

    def _match(self, event: str, channel: str) -> Registered | None:
        for pattern, entry in self._patterns[event]:
            if fnmatch.fnmatchcase(channel, pattern):
                return entry
        return None

    def _entry(self, event: str, name: str) -> Registered | None:
        if event in self._patterns:
            return self._match(event, name)
        if event == "rpc":
            return self.rpcs.get(name)
        return self._single.get(event)

    # ------------------------------------------------------------------ ApplicationHooks

    def handles(self, event: str, name: str = "") -> bool:
        return self._entry(event, name) is not None

    @property
    def has_rpc(self) -> bool:
        return bool(self.rpcs)

    @property
    def reads_requests(self) -> bool:
        return bool(self._single or self.rpcs or any(self._patterns.values()))

    async def connect(self, ctx: ConnectContext) -> ConnectAnswer | None:
        entry = self._single.get("connect")
        if entry is None:
            return None
        result = await self._call("connect", entry.function, ctx)
        return self._connect_answer("on_connect", result)

    async def refresh(self, ctx: RefreshContext) -> ConnectAnswer | None:
        entry = self._single.get("refresh")
        if entry is None:
            return None
        result = await self._call("refresh", entry.function, ctx)
        return self._connect_answer("on_refresh", result)

    async def subscribe(self, ctx: SubscribeContext) -> SubscribeAnswer | None:
        entry = self._match("subscribe", ctx.channel)
        if entry is None:
            return None
        result = await self._call("subscribe", entry.function, ctx)
        return self._subscribe_answer("on_subscribe", result)

    async def sub_refresh(self, ctx: SubscribeContext) -> SubscribeAnswer | None:
        entry = self._match("sub_refresh", ctx.channel)
        if entry is None:
            return None
        result = await self._call("sub_refresh", entry.function, ctx)
        return self._subscribe_answer("on_sub_refresh", result)

    async def publish(self, ctx: PublishContext, data: bytes) -> bytes | None:
        entry = self._match("publish", ctx.channel)
        if entry is None:
            return None
        assert entry.validator is not None
        value = entry.validator(data)
        result = await self._call("publish", entry.function, ctx, value)
        if result is None:
            return None
        return self._encode("on_publish", result)

    async def rpc(self, ctx: RPCContext, params: bytes) -> bytes:
        entry = self.rpcs[ctx.method]
        assert entry.validator is not None
        value = entry.validator(params or b"null")
        result = await self._call("rpc", entry.function, ctx, value)
        return self._encode(f"rpc {ctx.method!r}", result)

    async def message(self, ctx: MessageContext, data: bytes) -> None:
        entry = self._single.get("message")
        if entry is not None:
            assert entry.validator is not None
            await self._call("message", entry.function, ctx, entry.validator(data or b"null"))

    async def disconnect(self, ctx: DisconnectContext) -> None:
        entry = self._single.get("disconnect")
        if entry is None:
            return
        # The client is gone: nobody to answer, and _call logged any failure.
        with contextlib.suppress(ReplyError, DisconnectError):
            await self._call("disconnect", entry.function, ctx)

    def check_publication(self, channel: str, data: bytes) -> None:
        for pattern, validator in self.channels:
            if fnmatch.fnmatchcase(channel, pattern):
                validator(data)
                return

    # ------------------------------------------------------------------ calling

    async def _call(self, event: str, function: Handler, *args: Any) -> Any:
        """Run one handler under the timeout; turn its outcome into the protocol's answer."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            with self.tracing.span(f"tidings.handler.{event}", attributes=_span_attributes(args)):
                async with asyncio.timeout(self._timeout()):
                    return await function(*args)
        except ClientError as exc:
            outcome = "client_error"
            raise ReplyError(Error(exc.code, exc.message)) from None
        except ClientDisconnect as exc:
            outcome = "disconnect"
            raise DisconnectError(Disconnect(exc.code, exc.reason)) from None
        except (ReplyError, DisconnectError):
            outcome = "client_error"
            raise
        except TimeoutError:
            outcome = "timeout"
            log.error(
                "%s handler %s ran past handler_timeout (%s s)",
                event,
                function.__qualname__,
                self._timeout(),
            )
            raise ReplyError(ErrorCode.INTERNAL, logged=True) from None
        except Exception:
            outcome = "error"
            log.exception("%s handler %s failed", event, function.__qualname__)
            raise ReplyError(ErrorCode.INTERNAL, logged=True) from None
        finally:
            for observe in self.observers:
                observe(event, time.perf_counter() - started, outcome)

    def _encode(self, what: str, value: Any) -> bytes:
        try:
            return encode_json(value)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("%s returned what cannot be sent as JSON: %s", what, exc)
            raise ReplyError(ErrorCode.INTERNAL, logged=True) from None

    def _connect_answer(self, what: str, result: Any) -> ConnectAnswer | None:
        if result is None:
            return None
        if not isinstance(result, ConnectResult):
            log.error("%s returned %s, not a ConnectResult or None", what, type(result).__name__)
            raise ReplyError(ErrorCode.INTERNAL, logged=True)
        return ConnectAnswer(
            user=result.user,
            info=b"" if result.info is None else self._encode(what, result.info),
            data=b"" if result.data is None else self._encode(what, result.data),
            channels=tuple(result.channels),
            expire_at=result.expire_at,
        )

    def _subscribe_answer(self, what: str, result: Any) -> SubscribeAnswer | None:
        if result is None:
            return None
        if not isinstance(result, SubscribeResult):
            log.error("%s returned %s, not a SubscribeResult or None", what, type(result).__name__)
            raise ReplyError(ErrorCode.INTERNAL, logged=True)
        snapshot = None
        data = result.data
        if callable(data):
            producer = data

            async def snapshot() -> bytes:
                return self._encode(what, await self._call("subscribe", producer))

            data = None
        return SubscribeAnswer(
            info=b"" if result.info is None else self._encode(what, result.info),
            data=b"" if data is None else self._encode(what, data),
            expire_at=result.expire_at,
            override=result.override,
            snapshot=snapshot,
            max_frequency=result.max_frequency,
        )
