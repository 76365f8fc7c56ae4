"""An application's AsyncAPI 3.0 document: its channels, their messages, its RPC methods.

:func:`build_document` is pure: a :class:`~tidings.Tidings` application in, a
JSON-able ``dict`` out, read from the application's configuration and its
registered handlers (nothing is started, nothing is read from disk).
``tidings asyncapi myapp:rt`` prints it as JSON or YAML (:func:`to_yaml`, a
small emitter of our own, so serving needs no YAML package).

How tidings maps onto AsyncAPI (docs/asyncapi.md has the long form):

* **One server**: the bidirectional WebSocket endpoint ``/connection/websocket``
  speaking the Centrifugo client protocol v2 in JSON (docs/protocol.md section 1).
* **Channels**: one per configured namespace (``chat:{name}``), one for channels
  without a namespace, and one per pattern that a typed channel or an
  ``on_subscribe``/``on_sub_refresh``/``on_publish`` handler names
  (``chat:room-*`` becomes the address ``chat:room-{name}``). A pattern ``ns:*``
  is the namespace's own channel. Each carries its namespace's options, in
  words (``description``) and as data (``x-tidings-options``).
* **Operations** are written from a client's side: it *receives* publications
  on every channel, *sends* publications where the namespace lets clients
  publish or an ``on_publish`` handler takes them, and *sends* each RPC as a
  request whose reply is the method's result.
* **Payloads** are what an SDK hands to the application (a publication's
  ``data``, an RPC's ``data``), not the protocol's envelopes around them, which
  each message's description names. Schemas come from annotations: a typed
  channel's schema, an ``on_publish`` handler's ``data`` parameter, an RPC's
  ``params`` parameter and return annotation; ``msgspec.json.schema`` for
  Structs, dataclasses and TypedDicts, pydantic's ``model_json_schema`` for its
  models. Their ``$defs`` move to ``components.schemas``.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tidings.channels import NAMESPACE_BOUNDARY, PRIVATE_PREFIX, ChannelOptions
from tidings.handlers import Handlers, Registered, Validator
from tidings.server.upgrades import JSON_SUBPROTOCOL
from tidings.version import __version__

if TYPE_CHECKING:
    from tidings.application import Tidings

ASYNCAPI_VERSION = "3.0.0"
WEBSOCKET_PATH = "/connection/websocket"
SUBPROTOCOL = str(JSON_SUBPROTOCOL)
SERVER_KEY = "tidings"
ANY_PUBLICATION = "publication"
"""The component message of channels whose publications may hold any JSON value."""

_COMPONENT_KEY = re.compile(r"[^A-Za-z0-9_.\-]+")
"""What AsyncAPI's component keys may not hold (they must match ``^[\\w\\d.\\-_]+$``)."""
_WILDCARD = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")
"""fnmatch's wildcards: ``*``, ``?`` and a bracket set (``[abc]``, ``[!abc]``)."""
_DEFS_REF = re.compile(r"^#/\$defs/(.+)$")

JSON = dict[str, Any]


# --------------------------------------------------------------------------- the document


def build_document(
    app: Tidings,
    *,
    title: str | None = None,
    version: str | None = None,
    url: str | None = None,
) -> JSON:
    """The AsyncAPI 3.0 document of ``app``.

    ``title`` and ``version`` default to the application's ``title`` and
    ``version`` attributes when it has them ("tidings" and "1.0.0" otherwise);
    ``url`` is the WebSocket URL clients connect to (default: the configured
    host and port, ``ws://HOST:PORT/connection/websocket``).
    """
    builder = _Builder(app.handlers)
    config = app.config
    builder.add_channels(config.channels, config.namespaces())
    builder.add_rpcs()
    document: JSON = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or _text_attribute(app, "title") or "tidings",
            "version": version or _text_attribute(app, "version") or "1.0.0",
            "description": INFO_DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            SERVER_KEY: _server(url or f"ws://{config.host}:{config.port}{WEBSOCKET_PATH}")
        },
        "channels": builder.channels,
        "operations": builder.operations,
        "components": {"schemas": builder.schemas.components, "messages": builder.messages},
        "x-tidings-version": __version__,
    }
    if not builder.schemas.components:
        del document["components"]["schemas"]
    return document


INFO_DESCRIPTION = (
    "Channels, messages and RPC methods of a tidings application: clients speak the "
    "Centrifugo client protocol v2 (JSON) over WebSocket, with any Centrifugo SDK "
    "(centrifuge-js, centrifuge-python...). Operations are described from a client's side: "
    "it receives publications, sends publications and calls RPC methods. Channel addresses "
    "are patterns: `{name}` stands for the rest of a channel name. Payloads are the `data` "
    "an SDK hands over; each message's description names the protocol frame around it."
)


def _text_attribute(app: object, name: str) -> str | None:
    value = getattr(app, name, None)
    return value if isinstance(value, str) and value else None


def _server(url: str) -> JSON:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"expected a ws:// or wss:// URL for the server, got {url!r}")
    return {
        "host": parts.netloc,
        "protocol": parts.scheme,
        "pathname": parts.path or "/",
        "title": "tidings WebSocket endpoint",
        "description": (
            "Centrifugo client protocol v2, JSON in text frames (docs/protocol.md section 1). "
            f"Subprotocol: none or `{SUBPROTOCOL}` (echoed when offered); "
            "`centrifuge-protobuf` selects the binary encoding of the same messages "
            "(docs/protocol.md, Protobuf), which this document does not describe. "
            "A client first sends `connect`, with a connection JWT in `token` or with the "
            "cookies and headers an `on_connect` handler reads; then `subscribe`, `publish` "
            "and `rpc` commands, each answered by a reply with the same `id`."
        ),
        "x-tidings-subprotocol": SUBPROTOCOL,
    }


# --------------------------------------------------------------------------- channels


@dataclass(slots=True)
class _Channel:
    """One channel of the document before it is written out."""

    key: str
    pattern: str
    """The glob the channel stands for; ``""`` for channels without a namespace."""
    namespace: str | None
    """``""`` for channels without a namespace; None when the pattern leaves it open."""
    options: ChannelOptions | None


class _Builder:
    """Collects channels, operations, messages and schemas, with unique keys."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.schemas = _Schemas()
        self.channels: JSON = {}
        self.operations: JSON = {}
        self.messages: JSON = {}

    # ------------------------------------------------------------------ channels

    def add_channels(
        self, top_level: ChannelOptions, namespaces: dict[str, ChannelOptions]
    ) -> None:
        planned = [_Channel(_unique("default", self.channels), "", "", top_level)]
        self.channels[planned[0].key] = None  # reserve the key
        by_pattern: dict[str, _Channel] = {}
        for name, options in namespaces.items():
            channel = _Channel(
                _unique(_component_key(name), self.channels),
                f"{name}{NAMESPACE_BOUNDARY}*",
                name,
                options,
            )
            self.channels[channel.key] = None
            by_pattern[channel.pattern] = channel
            planned.append(channel)
        namespace_channels = list(planned)
        for pattern in self._handler_patterns():
            if pattern in by_pattern:
                continue
            if all(_covers(pattern, channel) for channel in namespace_channels):
                continue  # `*`: it shows on every namespace's channel already
            namespace = _namespace_of(pattern)
            known: ChannelOptions | None = None
            if namespace is not None:
                known = top_level if namespace == "" else namespaces.get(namespace)
            channel = _Channel(
                _unique(_pattern_key(pattern), self.channels), pattern, namespace, known
            )
            self.channels[channel.key] = None
            by_pattern[pattern] = channel
            planned.append(channel)
        for channel in planned:
            self._add_channel(channel)

    def _pattern_handlers(self, event: str) -> list[tuple[str, Registered]]:
        return self.handlers.patterns(event)

    def _handler_patterns(self) -> Iterator[str]:
        """Patterns of typed channels, then of channel handlers, in registration order."""
        for pattern, _ in self.handlers.channels:
            yield pattern
        for event in ("subscribe", "sub_refresh", "publish"):
            for pattern, _ in self._pattern_handlers(event):
                yield pattern

    def _covering(self, event: str, channel: _Channel) -> tuple[str, Registered] | None:
        """The handler that takes ``event`` for the channel's names (first match wins)."""
        for pattern, entry in self._pattern_handlers(event):
            if _covers(pattern, channel):
                return pattern, entry
        return None

    def _typed(self, channel: _Channel) -> Validator | None:
        for pattern, validator in self.handlers.channels:
            if _covers(pattern, channel):
                return validator
        return None

    def _add_channel(self, channel: _Channel) -> None:
        address, parameters = _address(channel.pattern)
        subscribe = self._covering("subscribe", channel)
        publish = self._covering("publish", channel)
        typed = self._typed(channel)

        notes = [_scope(channel)]
        if channel.options is None and channel.namespace:
            notes.append(
                f"Namespace `{channel.namespace}` is not configured: subscribing and "
                "publishing get error 102 (unknown channel)"
            )
        else:
            notes.extend(
                _describe_access(
                    channel.options,
                    private=channel.pattern.startswith(PRIVATE_PREFIX),
                    subscribe_handler=_name(subscribe[1]) if subscribe else None,
                    publish_handler=_name(publish[1]) if publish else None,
                )
            )
        if channel.options is not None:
            notes.extend(_describe_features(channel.options))
        if typed is not None:
            notes.append("Typed channel: every publication is validated (error 107 when invalid)")

        body: JSON = {
            "address": address,
            "title": channel.pattern or "channels without a namespace",
            "description": ". ".join(notes) + ".",
        }
        if parameters:
            body["parameters"] = parameters
        messages: JSON = {}
        body["messages"] = messages
        if channel.namespace is not None:
            body["x-tidings-namespace"] = channel.namespace
        if channel.options is not None:
            body["x-tidings-options"] = _option_values(channel.options)
        self.channels[channel.key] = body

        received = self._publication_message(channel, typed)
        messages["publication"] = {"$ref": f"#/components/messages/{received}"}
        self.operations[_unique(f"{channel.key}.receive", self.operations)] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel.key}"},
            "title": f"Receive publications of {body['title']}",
            "summary": "Publications in a subscribed channel (push `pub`).",
            "messages": [{"$ref": f"#/channels/{channel.key}/messages/publication"}],
        }

        options = channel.options
        clients_may_publish = options is not None and (
            options.allow_publish_for_client or options.allow_publish_for_subscriber
        )
        unknown_namespace = channel.options is None and bool(channel.namespace)
        if unknown_namespace or (publish is None and not clients_may_publish):
            return
        sent_key = "publication"
        if publish is not None and publish[1].validator is not None:
            schema = self.schemas.payload_of(publish[1].validator)
            if schema is not None and schema != self.messages[received].get("payload"):
                sent = self._message(
                    f"{channel.key}.publish",
                    name="publish",
                    title=f"Publication sent into {body['title']}",
                    description=(
                        "The `data` of a `publish` command, "
                        '`{"id":N,"publish":{"channel":"<channel>","data":<payload>}}`, '
                        f"as the on_publish handler `{_name(publish[1])}` takes it."
                    ),
                    payload=schema,
                )
                messages["publish"] = {"$ref": f"#/components/messages/{sent}"}
                sent_key = "publish"
        operation: JSON = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel.key}"},
            "title": f"Publish into {body['title']}",
            "summary": "A client publication (command `publish`, reply `{}` or an error).",
            "messages": [{"$ref": f"#/channels/{channel.key}/messages/{sent_key}"}],
        }
        if publish is not None and (doc := inspect.getdoc(publish[1].function)):
            operation["description"] = doc
        self.operations[_unique(f"{channel.key}.publish", self.operations)] = operation

    def _publication_message(self, channel: _Channel, typed: Validator | None) -> str:
        frame = '`{"push":{"channel":"<channel>","pub":{"data":<payload>,"offset":N}}}`'
        if typed is not None:
            schema = self.schemas.payload_of(typed)
            if schema is not None:
                return self._message(
                    f"{channel.key}.publication",
                    name="publication",
                    title=f"Publication in {channel.pattern or 'channels without a namespace'}",
                    description=f"The `data` of a publication, {frame}, or in a subscribe "
                    "reply's and a history result's `publications`.",
                    payload=schema,
                )
        if ANY_PUBLICATION not in self.messages:
            self.messages[ANY_PUBLICATION] = {
                "name": "publication",
                "title": "Publication",
                "description": f"The `data` of a publication, {frame}: any JSON value.",
            }
        return ANY_PUBLICATION

    def _message(self, key: str, *, payload: JSON | None, **fields: str) -> str:
        key = _unique(_component_key(key), self.messages)
        message: JSON = dict(fields)
        if payload is not None:
            message["payload"] = payload
        self.messages[key] = message
        return key

    # ------------------------------------------------------------------ RPC

    def add_rpcs(self) -> None:
        if not self.handlers.rpcs:
            return
        key = _unique("rpc", self.channels)
        messages: JSON = {}
        self.channels[key] = {
            "address": None,
            "title": "RPC",
            "description": (
                "Calls on the connection itself, not on a channel: "
                '`{"id":N,"rpc":{"method":"<method>","data":<params>}}`, answered by '
                '`{"id":N,"rpc":{"data":<result>}}` or an error: 104 for an unknown method, '
                "107 for invalid params (the first bad field named), 100 when the handler "
                "fails, or the ClientError the handler raises."
            ),
            "messages": messages,
        }
        for method, entry in self.handlers.rpcs.items():
            base = _component_key(f"rpc.{method}")
            params = self._message(
                f"{base}.params",
                name=method,
                title=f"{method} params",
                description=f'The `data` of `{{"rpc":{{"method":{json.dumps(method)},...}}}}`.',
                payload=self.schemas.payload_of(entry.validator) if entry.validator else None,
            )
            result = self._message(
                f"{base}.result",
                name=method,
                title=f"{method} result",
                description="The `data` of the reply's `rpc` result.",
                payload=self.schemas.payload_of_annotation(_return_annotation(entry.function)),
            )
            messages[params] = {"$ref": f"#/components/messages/{params}"}
            messages[result] = {"$ref": f"#/components/messages/{result}"}
            operation: JSON = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{key}"},
                "title": f"Call {method}",
                "summary": f"RPC method {json.dumps(method)}.",
                "messages": [{"$ref": f"#/channels/{key}/messages/{params}"}],
                "reply": {
                    "channel": {"$ref": f"#/channels/{key}"},
                    "messages": [{"$ref": f"#/channels/{key}/messages/{result}"}],
                },
                "x-tidings-rpc-method": method,
            }
            if doc := inspect.getdoc(entry.function):
                operation["description"] = doc
            self.operations[_unique(base, self.operations)] = operation


def _covers(pattern: str, channel: _Channel) -> bool:
    """Whether the glob ``pattern`` matches every name of ``channel`` (a handler or type
    registered for it applies there).

    Matching the channel's own pattern as a string answers it for the usual
    shapes: ``*`` covers ``chat:*``, ``chat:*`` covers ``chat:room-*``, and
    ``chat:room-*`` does not cover ``chat:*``. Channels without a namespace
    are covered by patterns without a boundary that match anything (``*``).
    """
    if pattern == channel.pattern:
        return True
    if channel.namespace == "" and channel.pattern == "":
        return NAMESPACE_BOUNDARY not in pattern and fnmatch.fnmatchcase("*", pattern)
    return fnmatch.fnmatchcase(channel.pattern, pattern)


def _namespace_of(pattern: str) -> str | None:
    """The namespace every channel matching ``pattern`` is in ("" for none), if one is."""
    bare = pattern.removeprefix(PRIVATE_PREFIX)
    namespace, boundary, _ = bare.partition(NAMESPACE_BOUNDARY)
    if _WILDCARD.search(namespace):
        return None  # `*:x` or `ch*` may reach any namespace
    return namespace if boundary else ""


def _address(pattern: str) -> tuple[str, JSON]:
    """The AsyncAPI address of a glob, each wildcard a parameter (``chat:*`` -> ``chat:{name}``)."""
    if not pattern:
        return "{name}", {"name": {"description": "A channel name without a namespace (no `:`)."}}
    wildcards = list(_WILDCARD.finditer(pattern))
    names = ["name"] if len(wildcards) == 1 else [f"name{i}" for i in range(1, len(wildcards) + 1)]
    address: list[str] = []
    parameters: JSON = {}
    end = 0
    for name, match in zip(names, wildcards, strict=True):
        address.append(pattern[end : match.start()])
        address.append(f"{{{name}}}")
        end = match.end()
        parameters[name] = {"description": _wildcard_text(match.group(), pattern)}
    address.append(pattern[end:])
    return "".join(address), parameters


def _wildcard_text(wildcard: str, pattern: str) -> str:
    if wildcard == "*":
        meaning = "any text"
    elif wildcard == "?":
        meaning = "one character"
    elif wildcard.startswith("[!"):
        meaning = f"one character not in `{wildcard[2:-1]}`"
    else:
        meaning = f"one character of `{wildcard[1:-1]}`"
    return f"`{wildcard}` of the pattern `{pattern}`: {meaning}."


def _scope(channel: _Channel) -> str:
    if channel.pattern == "":
        return "Channels without a namespace (names with no `:`)"
    kind = "Private channels" if channel.pattern.startswith(PRIVATE_PREFIX) else "Channels"
    if channel.namespace is None:
        return f"{kind} matching `{channel.pattern}`, in any namespace"
    if channel.namespace == "":
        return f"{kind} matching `{channel.pattern}` (no namespace)"
    if channel.pattern == f"{channel.namespace}{NAMESPACE_BOUNDARY}*":
        return f"{kind} of the namespace `{channel.namespace}`"
    return f"{kind} matching `{channel.pattern}` in the namespace `{channel.namespace}`"


def _describe_access(
    options: ChannelOptions | None,
    *,
    private: bool,
    subscribe_handler: str | None,
    publish_handler: str | None,
) -> list[str]:
    """Who may subscribe and publish: a handler replaces the namespace's rules
    (``allow_subscribe_*``, ``allow_publish_*``); a subscription token always grants."""
    if subscribe_handler is not None:
        subscribe = f"as the on_subscribe handler `{subscribe_handler}` decides"
        subscribe += ", or with a subscription token"
    elif private:
        subscribe = "with a subscription token only (private channel)"
    elif options is None:
        subscribe = "as the options of the channel's namespace say"
    else:
        who = _who(options.allow_subscribe_for_client, False, options.allow_subscribe_for_anonymous)
        if options.allow_user_limited_channels:
            who.append("the users a `name#user1,user2` channel names")
        if who:
            subscribe = ", ".join(who) + "; or with a subscription token"
        else:
            subscribe = "with a subscription token only"
    if publish_handler is not None:
        publish = f"through the on_publish handler `{publish_handler}`, which may reshape the data"
    elif options is None:
        publish = "as the options of the channel's namespace say"
    else:
        who = _who(
            options.allow_publish_for_client,
            options.allow_publish_for_subscriber,
            options.allow_publish_for_anonymous,
        )
        publish = ", ".join(who) if who else "the server only"
    return [f"Subscribe: {subscribe}", f"Publish: {publish}"]


def _describe_features(options: ChannelOptions) -> list[str]:
    """History, recovery, presence and join/leave, in words (docs/configuration.md)."""
    notes = []
    if options.history_enabled:
        history = (
            f"History: the last {options.history_size} publications for "
            f"{_seconds(options.history_ttl)}"
        )
        if options.force_recovery:
            history += ", recovery on every subscription"
        elif options.allow_recovery:
            history += ", recovery when a client asks"
        if options.force_positioning or options.allow_positioning:
            history += ", positioning"
        readers = _who(
            options.allow_history_for_client,
            options.allow_history_for_subscriber,
            options.allow_history_for_anonymous,
        )
        if readers:
            history += "; read by " + ", ".join(readers)
        notes.append(history)
    if options.presence:
        presence = "Presence"
        readers = _who(
            options.allow_presence_for_client,
            options.allow_presence_for_subscriber,
            options.allow_presence_for_anonymous,
        )
        if readers:
            presence += ", read by " + ", ".join(readers)
        notes.append(presence)
    if options.join_leave:
        notes.append(
            "Join and leave pushes"
            + (" to every subscriber" if options.force_push_join_leave else " on request")
        )
    return notes


def _who(client: bool, subscriber: bool, anonymous: bool) -> list[str]:
    who = []
    if client:
        who.append("any authenticated client")
    elif subscriber:
        who.append("authenticated subscribers")
    if (client or subscriber) and anonymous:
        who.append("anonymous clients too")
    return who


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


def _option_values(options: ChannelOptions) -> JSON:
    """The options that differ from the defaults (every option is off by default)."""
    defaults = ChannelOptions()
    return {
        name: getattr(options, name)
        for name in ChannelOptions.__struct_fields__
        if getattr(options, name) != getattr(defaults, name)
    }


def _name(entry: Registered) -> str:
    return entry.function.__qualname__


def _return_annotation(function: Callable[..., Any]) -> Any:
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: the result is any JSON
        return inspect.Parameter.empty
    return hints.get("return", inspect.Parameter.empty)


# --------------------------------------------------------------------------- keys


def _component_key(text: str) -> str:
    return _COMPONENT_KEY.sub("_", text).strip("_") or "x"


def _pattern_key(pattern: str) -> str:
    """A readable key: ``chat:room-*`` -> ``chat.room``, ``$dm:*`` -> ``private.dm``."""
    if pattern.startswith(PRIVATE_PREFIX):
        pattern = "private." + pattern[1:]
    key = _COMPONENT_KEY.sub("_", pattern.replace(NAMESPACE_BOUNDARY, "."))
    return key.strip("_.-") or "any"


def _unique(key: str, taken: JSON) -> str:
    if key not in taken:
        return key
    number = 2
    while f"{key}_{number}" in taken:
        number += 1
    return f"{key}_{number}"


# --------------------------------------------------------------------------- schemas


class _Schemas:
    """``components.schemas``: the named definitions of every payload, shared by name.

    msgspec and pydantic both write named types under ``$defs`` and point at them
    with ``#/$defs/Name``; AsyncAPI keeps them in ``components.schemas``. Two
    different types with one name get ``Name_2``...
    """

    def __init__(self) -> None:
        self.components: JSON = {}

    def payload_of(self, validator: Validator) -> JSON | None:
        """The payload schema of what ``validator`` accepts; None for any JSON value."""
        return self.payload_of_annotation(validator.annotation, validator)

    def payload_of_annotation(
        self, annotation: Any, validator: Validator | None = None
    ) -> JSON | None:
        if annotation is inspect.Parameter.empty or annotation is Any:
            return None
        schema = _json_schema(annotation, validator)
        if not schema:
            return None  # any JSON value
        return self._hoist(schema)

    def _hoist(self, schema: JSON) -> JSON:
        """Move ``$defs`` (anywhere in ``schema``) to the components, rewriting refs."""
        defs: JSON = {}
        _collect_defs(schema, defs)
        renames = {name: _component_key(name) for name in defs}
        while True:  # a name taken by a different schema gets a suffix; refs follow
            rewritten = {name: _rewrite(value, renames) for name, value in defs.items()}
            clash = next(
                (
                    name
                    for name, value in rewritten.items()
                    if renames[name] in self.components and self.components[renames[name]] != value
                ),
                None,
            )
            if clash is None:
                break
            renames[clash] = _unique(renames[clash], {**self.components, **_taken(renames, clash)})
        for name, value in rewritten.items():
            self.components[renames[name]] = value
        result: JSON = _rewrite(schema, renames)
        return result


def _taken(renames: dict[str, str], skip: str) -> JSON:
    return {key: None for name, key in renames.items() if name != skip}


def _collect_defs(value: Any, defs: JSON) -> None:
    """Pop every ``$defs`` out of ``value`` into ``defs`` (a union's members bring their own)."""
    if isinstance(value, dict):
        found = value.pop("$defs", None)
        if isinstance(found, dict):
            for name, definition in found.items():
                _collect_defs(definition, defs)
                defs.setdefault(name, definition)
        for item in value.values():
            _collect_defs(item, defs)
    elif isinstance(value, list):
        for item in value:
            _collect_defs(item, defs)


def _rewrite(value: Any, renames: dict[str, str]) -> Any:
    """A copy of ``value`` with ``#/$defs/X`` refs pointing at ``#/components/schemas/...``.

    An OpenAPI-style ``discriminator`` object (``{"propertyName", "mapping"}``, which
    msgspec and pydantic write for tagged unions) becomes ``x-discriminator``:
    AsyncAPI's own ``discriminator`` is a bare property name with other rules.
    """
    if isinstance(value, dict):
        result: JSON = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and (match := _DEFS_REF.match(item)):
                name = match.group(1)
                result[key] = f"#/components/schemas/{renames.get(name, _component_key(name))}"
            elif key == "discriminator" and isinstance(item, dict):
                result["x-discriminator"] = _rewrite_mapping(item, renames)
            else:
                result[key] = _rewrite(item, renames)
        return result
    if isinstance(value, list):
        return [_rewrite(item, renames) for item in value]
    return value


def _rewrite_mapping(discriminator: JSON, renames: dict[str, str]) -> JSON:
    result = dict(discriminator)
    mapping = result.get("mapping")
    if isinstance(mapping, dict):
        result["mapping"] = {
            tag: _rewrite({"$ref": ref}, renames)["$ref"] if isinstance(ref, str) else ref
            for tag, ref in mapping.items()
        }
    return result


def _is_pydantic_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_json_schema")


def _json_schema(annotation: Any, validator: Validator | None = None) -> JSON:
    """JSON Schema of ``annotation``, as the handlers validate it (``Validator.json_schema``).

    What msgspec cannot describe as a whole (a pydantic model inside a union or a
    list, which return annotations may hold: ``Model | None``, ``list[Model]``)
    is described part by part; a part nothing describes is any JSON value (``{}``).
    """
    if _is_pydantic_model(annotation):
        schema = Validator(annotation).json_schema()
        if "$ref" in schema:
            return schema
        # pydantic writes the model itself inline: name it as msgspec does its types.
        name = annotation.__name__
        return {"$ref": f"#/$defs/{name}", "$defs": {**schema.pop("$defs", {}), name: schema}}
    try:
        return (validator or Validator(annotation)).json_schema()
    except (TypeError, ValueError):
        pass
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_json_schema(member) for member in arguments]}
    if isinstance(origin, type) and arguments:
        if issubclass(origin, Mapping) and len(arguments) == 2:
            return {"type": "object", "additionalProperties": _json_schema(arguments[1])}
        if issubclass(origin, tuple) and arguments[-1] is not Ellipsis:
            return {
                "type": "array",
                "prefixItems": [_json_schema(argument) for argument in arguments],
                "minItems": len(arguments),
                "maxItems": len(arguments),
            }
        if issubclass(origin, Iterable) and not issubclass(origin, str | bytes):
            return {"type": "array", "items": _json_schema(arguments[0])}
    return {}


# --------------------------------------------------------------------------- YAML


def to_json(document: JSON) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_yaml(document: Any) -> str:
    """Block-style YAML for a JSON-able value; reads back as the same value in YAML 1.1 and 1.2.

    Strings are written plain only when no YAML reader could take them for
    something else (``name``, ``$ref``, ``chat.publication``), double-quoted
    with escapes otherwise. Empty mappings and lists are ``{}`` and ``[]``.
    """
    if not _is_block(document):
        return _scalar(document) + "\n"
    return "\n".join(_yaml_lines(document, 0)) + "\n"


_PLAIN = re.compile(r"[A-Za-z_$/][A-Za-z0-9_.$/\-()*,:' ]*(?<![: ])")
"""Plain scalars: a first character no reader takes for a number, an indicator or a
quote, then characters that mean nothing inside one (a ``: `` excepted, below)."""
_YAML_WORDS = frozenset(["y", "n", "yes", "no", "on", "off", "true", "false", "null"])
"""Words YAML 1.1 or 1.2 read as booleans or null, in any case."""
_UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]"
)
"""What a double-quoted YAML string must escape beyond JSON's escapes: DEL, C1 controls
(NEL is a line break), the Unicode line and paragraph separators, surrogates, BOM."""


def _is_block(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = _scalar(str(key))
            if _is_block(item):
                lines.append(f"{pad}{name}:")
                lines.extend(_yaml_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{name}: {_scalar(item)}")
    else:
        for item in value:
            if _is_block(item):
                nested = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {nested[0][indent + 2 :]}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 floats need the dot: 1.0e-05
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML")
    if _PLAIN.fullmatch(value) and ": " not in value and value.lower() not in _YAML_WORDS:
        return value
    quoted = json.dumps(value, ensure_ascii=False)
    return _UNPRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)
