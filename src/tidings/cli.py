"""The ``tidings`` command: serve, token, publish, bench, asyncapi."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import socket
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import click

from tidings import logs
from tidings.config import OPTIONS, Config, announce, load_config
from tidings.errors import BrokerUnavailable, ConfigError
from tidings.version import __version__

if TYPE_CHECKING:
    from tidings.application import Tidings

log = logging.getLogger("tidings")

CONFIG_ERROR_EXIT = 2


def _fail_config(error: ConfigError) -> None:
    click.echo(f"tidings: configuration error: {error}", err=True)
    sys.exit(CONFIG_ERROR_EXIT)


def _option_decorators() -> list[Any]:
    """One CLI flag per top-level option, generated from the config table."""
    decorators = []
    for option in OPTIONS:
        help_text = f"{option.help} [default: {option.default_text}; env {option.env}]"
        if option.kind == "bool":
            decorators.append(
                click.option(
                    f"{option.flag}/--no-{option.flag[2:]}",
                    option.name,
                    default=None,
                    help=help_text,
                )
            )
        else:
            click_type: Any = int if option.kind == "int" else str
            decorators.append(
                click.option(
                    option.flag,
                    option.name,
                    type=click_type,
                    default=None,
                    metavar=option.metavar,
                    help=help_text,
                )
            )
    return decorators


def _with_options(function: Any) -> Any:
    for decorator in reversed(_option_decorators()):
        function = decorator(function)
    return function


SERVE_EPILOG = """\b
DURATION: a number and a unit, 250ms, 30s, 5m, 1h or 2d (a bare number is seconds).
A,B,...: a comma-separated list (in TOML, an array of strings).
BYTES: a number of bytes.

Channel options (presence, join_leave, history_size, history_ttl,
force_recovery, allow_subscribe_for_client, ...) are set in the TOML file's
[channels] table and [channels.namespaces.NAME] tables; docs/configuration.md
lists every option. Precedence: defaults < TOML file < TIDINGS_* variables < flags."""


@click.group()
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """tidings: a real-time messaging server (Centrifugo protocol)."""


@main.command(epilog=SERVE_EPILOG)
@click.argument("app", required=False)
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    help="Directory to import APP from (put first on the module path).",
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file."
)
@_with_options
def serve(app: str | None, app_dir: str, config_path: str | None, **flags: Any) -> None:
    """Run the server; with APP (MODULE:ATTRIBUTE, e.g. myapp:rt) run that application.

    An application reads its own configuration (Tidings("tidings.toml")); the
    flags given here override it.
    """
    application = None
    try:
        if app:
            if config_path:
                raise ConfigError(
                    "--config: the application reads its own configuration "
                    '(Tidings("tidings.toml")); give flags to override it'
                )
            application = _load_app(app, app_dir)
            config = application.config.with_overrides(flags)
            application.use_config(config)
        else:
            config = load_config(config_path, overrides=flags)
    except ConfigError as error:
        _fail_config(error)
        return
    logs.configure_for(config)
    problem = listen_problem(config.host, config.port)
    if problem is not None:
        log.error("%s", problem)
        sys.exit(1)
    if config.workers > 1:
        from tidings.server.workers import run_workers

        sys.exit(run_workers(config, app=(app, app_dir) if app else None))
    sys.exit(run_server(config, application))


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port``, in one line; None when it can.

    Binds (never listens) each address the host resolves to, the way the
    server will, so a port in use, a name that does not resolve or an address
    of another machine is reported before anything starts. A race with
    another process is still caught when the server binds for real.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return (
            f"cannot listen on {host}:{port}: the host name {host!r} does not resolve; "
            "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
        )
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return describe_listen_error(host, port, exc)
    return None


def describe_listen_error(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind: what happened and which flag changes it."""
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: port {port} is already in use (another server is listening there); "
            "stop it or choose another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; give --host one of its "
            "addresses (127.0.0.1, or 0.0.0.0 for every interface)"
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose --port 1024+"
    if isinstance(exc, socket.gaierror):
        return f"{where}: the host name {host!r} does not resolve"
    return f"{where}: {exc.strerror or exc}"


def _loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def _load_app(spec: str, app_dir: str) -> Tidings:
    """The application named on the command line, or one line and exit 1."""
    from tidings.loading import AppNotFound, load_app

    try:
        return load_app(spec, app_dir)
    except AppNotFound as exc:
        log.error("cannot load the application: %s", exc)
        sys.exit(1)


def run_server(config: Config, application: Tidings | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
    from tidings.node import Node
    from tidings.server.app import TidingsServer

    async def serve_forever() -> int:
        node = application.node if application is not None else Node(config)
        static = application.static_routes if application is not None else ()
        server = TidingsServer(node, static=static)
        try:
            if application is not None:
                await application.start()  # the node, then the application's on_startup
            port = await server.start()
        except BrokerUnavailable as exc:
            log.error("cannot start: the broker is unreachable: %s", exc)
            return 1
        except OSError as exc:  # lost a race with another process since listen_problem
            log.error("%s", describe_listen_error(config.host, config.port, exc))
            await node.shutdown()
            return 1
        except Exception:
            log.exception("cannot start: the application's on_startup failed")
            await node.shutdown()
            return 1
        announce(config, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        if application is not None:
            await application.stop_within(config.shutdown_timeout)
        await server.shut_down()
        return 0

    result: int = _loop_runner()(serve_forever())
    return result


@main.command()
@click.option("--user", required=True, help='User ID (the `sub` claim); "" for anonymous.')
@click.option(
    "--ttl", type=int, default=3600, show_default=True, help="Seconds until `exp`; 0 for none."
)
@click.option("--channels", default="", help="Comma-separated server-side channels.")
@click.option("--info", default=None, help="JSON shown to others as conn_info.")
@click.option("--channel", default=None, help="Make a subscription token for this channel instead.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file."
)
@click.option("--secret", default=None, help="HMAC secret (default: the configured one).")
def token(
    user: str,
    ttl: int,
    channels: str,
    info: str | None,
    channel: str | None,
    config_path: str | None,
    secret: str | None,
) -> None:
    """Print a connection JWT signed with the configured secret."""
    from tidings.auth import make_token

    if ttl < 0:
        click.echo(
            f"tidings: --ttl must be a number of seconds >= 0 (0: no expiry), got {ttl}; "
            "a negative one would print a token that has already expired",
            err=True,
        )
        sys.exit(CONFIG_ERROR_EXIT)

    try:
        config = load_config(config_path)
    except ConfigError as error:
        _fail_config(error)
        return
    key = secret or config.token_hmac_secret
    if not key:
        click.echo(
            "tidings: no token secret: set TIDINGS_TOKEN_HMAC_SECRET, token_hmac_secret in the "
            "config file, or pass --secret",
            err=True,
        )
        sys.exit(CONFIG_ERROR_EXIT)
    info_value = None
    if info is not None:
        try:
            info_value = json.loads(info)
        except json.JSONDecodeError:
            click.echo("tidings: --info must be JSON", err=True)
            sys.exit(CONFIG_ERROR_EXIT)
    click.echo(
        make_token(
            key,
            user=user,
            ttl=ttl or None,
            channels=[c for c in channels.split(",") if c],
            info=info_value,
            channel=channel,
            algorithm=config.token_algorithms[0] if config.token_algorithms else "HS256",
        )
    )


@main.command()
@click.argument("channel")
@click.argument("data")
@click.option("--url", default=None, help="Server base URL (default: from host and port).")
@click.option("--api-key", default=None, help="API key (default: the configured one).")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file."
)
def publish(
    channel: str, data: str, url: str | None, api_key: str | None, config_path: str | None
) -> None:
    """Publish JSON DATA to CHANNEL through the server API."""
    try:
        config = load_config(config_path)
    except ConfigError as error:
        _fail_config(error)
        return
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        click.echo('tidings: DATA must be JSON, e.g. \'{"text": "hi"}\'', err=True)
        sys.exit(CONFIG_ERROR_EXIT)
    base = url or f"http://{config.host}:{config.port}"
    body = json.dumps({"channel": channel, "data": payload}).encode()
    request = urllib.request.Request(
        base.rstrip("/") + "/api/publish",
        data=body,
        headers={"Content-Type": "application/json", "X-API-Key": api_key or config.api_key},
        method="POST",
    )
    sent_key = bool(api_key or config.api_key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        click.echo(f"tidings: {_http_error_text(error, sent_key=sent_key)}", err=True)
        sys.exit(1)
    except urllib.error.URLError as error:
        click.echo(
            f"tidings: cannot reach {base}: {error.reason} (is the server running? "
            "--url, or host and port from --config, say where)",
            err=True,
        )
        sys.exit(1)
    if "error" in answer:
        click.echo(f"tidings: {_error_text(answer['error'])}", err=True)
        sys.exit(1)
    click.echo(json.dumps(answer.get("result", {})))


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return f"error: {error}"
    text = f"error {error.get('code')}: {error.get('message')}"
    return f"{text} ({error['detail']})" if error.get("detail") else text


def _http_error_text(error: urllib.error.HTTPError, *, sent_key: bool) -> str:
    """What a refusal means for whoever runs ``tidings publish``: which setting to check."""
    body = error.read()
    if error.code == 401:
        if not sent_key:
            return (
                "the server wants an API key (HTTP 401) and none was sent: pass --api-key, or "
                "set TIDINGS_API_KEY (or api_key in --config) to the server's api_key"
            )
        return (
            "the server refused the API key (HTTP 401): --api-key, or else TIDINGS_API_KEY "
            "(or api_key in --config), must equal the server's api_key"
        )
    try:
        document = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()[:200]
        return f"the server answered HTTP {error.code}" + (f": {text}" if text else "")
    inner = document.get("error", document) if isinstance(document, dict) else document
    return f"the server answered HTTP {error.code}: {_error_text(inner)}"


BENCH_MISSING = (
    "tidings bench needs the load generator's packages: pip install 'tidings[bench]' "
    "(in a checkout: make test, or .venv/bin/pip install -e '.[bench]')"
)


def _add_bench() -> None:
    try:
        from tidings.bench import bench
    except ImportError as exc:  # the load generator's packages are an extra
        missing = (exc.name or "a package").split(".")[0]

        @main.command(
            "bench",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,
        )
        def bench_missing() -> None:
            """Measure tidings under load (needs: pip install 'tidings[bench]')."""
            click.echo(f"tidings: {BENCH_MISSING} ({missing} is not installed)", err=True)
            sys.exit(1)

        return
    main.add_command(bench, "bench")


_add_bench()


def _websocket_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith(("ws://", "wss://")):
        raise click.BadParameter(f"expected a ws:// or wss:// URL, got {value!r}")
    return value


@main.command(short_help="Print an application's AsyncAPI 3.0 document.")
@click.argument("app", metavar="MODULE:ATTRIBUTE")
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    help="Directory to import the module from (put first on the module path).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "yaml"]),
    default="json",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--title", default=None, help="info.title [default: the application's title, or the module]."
)
@click.option(
    "--api-version", default=None, help="info.version [default: the application's version, 1.0.0]."
)
@click.option(
    "--url",
    default=None,
    callback=_websocket_url,
    help="The WebSocket URL clients connect to "
    "[default: ws://HOST:PORT/connection/websocket from the configuration].",
)
def asyncapi(
    app: str,
    app_dir: str,
    output_format: str,
    title: str | None,
    api_version: str | None,
    url: str | None,
) -> None:
    """Print the AsyncAPI 3.0 document of an application (like myapp:rt) on stdout.

    Channels (namespaces, typed channels, handler patterns, with their options),
    publication schemas, and each RPC method's params and result; docs/asyncapi.md.
    """
    import contextlib

    from tidings.asyncapi import build_document, to_json, to_yaml
    from tidings.loading import AppNotFound, load_app

    try:
        # Whatever the module prints while it loads must not land in the document.
        with contextlib.redirect_stdout(sys.stderr):
            application = load_app(app, app_dir)
    except AppNotFound as error:
        click.echo(f"tidings: cannot load the application: {error}", err=True)
        sys.exit(1)
    except ConfigError as error:
        _fail_config(error)
        return
    if title is None and getattr(application, "title", None) is None:
        title = app.partition(":")[0]
    document = build_document(application, title=title, version=api_version, url=url)
    sys.stdout.write(to_yaml(document) if output_format == "yaml" else to_json(document))
