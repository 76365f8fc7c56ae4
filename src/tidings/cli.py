"""The ``tidings`` command: serve, token, publish, bench."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from tidings.config import OPTIONS, Config, announce, load_config
from tidings.errors import BrokerUnavailable, ConfigError
from tidings.version import __version__

log = logging.getLogger("tidings")

CONFIG_ERROR_EXIT = 2


def _fail_config(error: ConfigError) -> None:
    click.echo(f"tidings: configuration error: {error}", err=True)
    sys.exit(CONFIG_ERROR_EXIT)


def _option_decorators() -> list[Any]:
    """One CLI flag per top-level option, generated from the config table."""
    decorators = []
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}; default {option.default!r}]"
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
                    option.flag, option.name, type=click_type, default=None, help=help_text
                )
            )
    return decorators


def _with_options(function: Any) -> Any:
    for decorator in reversed(_option_decorators()):
        function = decorator(function)
    return function


SERVE_EPILOG = """Channel options (presence, join_leave, history_size, history_ttl,
force_recovery, allow_subscribe_for_client, ...) are set in the TOML file's
[channels] table and [channels.namespaces.NAME] tables; docs/configuration.md
lists every option. Precedence: defaults < TOML file < TIDINGS_* variables < flags."""


@click.group()
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """tidings: a real-time messaging server (Centrifugo protocol)."""


@main.command(epilog=SERVE_EPILOG)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file."
)
@_with_options
def serve(config_path: str | None, **flags: Any) -> None:
    """Run the server."""
    try:
        config = load_config(config_path, overrides=flags)
    except ConfigError as error:
        _fail_config(error)
        return
    _configure_logging(config.log_level)
    if config.workers > 1:
        from tidings.server.workers import run_workers

        sys.exit(run_workers(config))
    sys.exit(run_server(config))


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def run_server(config: Config) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
    from tidings.node import Node
    from tidings.server.app import TidingsServer

    async def serve_forever() -> int:
        node = Node(config)
        server = TidingsServer(node)
        try:
            port = await server.start()
        except BrokerUnavailable as exc:
            log.error("cannot start: the broker is unreachable: %s", exc)
            return 1
        announce(config, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down: disconnecting clients with 3001")
        try:
            await asyncio.wait_for(server.stop(), timeout=config.shutdown_timeout + 2)
        except TimeoutError:
            log.warning("shutdown timed out; exiting anyway")
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
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        click.echo(f"tidings: the server answered HTTP {error.code}", err=True)
        sys.exit(1)
    except urllib.error.URLError as error:
        click.echo(f"tidings: cannot reach {base}: {error.reason}", err=True)
        sys.exit(1)
    if "error" in answer:
        click.echo(
            f"tidings: error {answer['error'].get('code')}: {answer['error'].get('message')}",
            err=True,
        )
        sys.exit(1)
    click.echo(json.dumps(answer.get("result", {})))


def _add_bench() -> None:
    try:
        from tidings.bench import bench
    except ImportError:  # the load generator is optional at import time
        return
    main.add_command(bench, "bench")


_add_bench()
