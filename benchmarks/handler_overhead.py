"""What an application handler costs per command, against the same command without one.

Drives a real :class:`~tidings.session.Session` in-process (the TestClient's
path: no socket, so the figure is the Python work of the command alone) and
times N commands of each kind, best of several rounds:

* ``publish``: the namespace's rules; an ``on_publish`` handler that returns
  ``None`` (data decoded to ``dict``); one that validates into a Struct and
  returns a reshaped Struct; and a typed channel (schema check only);
* ``rpc``: a handler taking and returning Structs.

Run: ``.venv/bin/python benchmarks/handler_overhead.py [--commands 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgspec

from tidings import PublishContext, RPCContext, Tidings
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig, Config
from tidings.testing import TestClient


class Message(msgspec.Struct):
    text: str
    n: int


class Shout(msgspec.Struct):
    text: str
    n: int
    loud: bool


def config() -> Config:
    open_ns = ChannelOptions(
        allow_subscribe_for_client=True,
        allow_subscribe_for_anonymous=True,
        allow_publish_for_client=True,
        allow_publish_for_anonymous=True,
    )
    return Config(
        demo="off",
        allow_anonymous_connect_without_token=True,
        client_command_rate_limit=0,
        channels=ChannelsConfig(
            namespaces={"plain": open_ns, "none": open_ns, "shape": open_ns, "typed": open_ns}
        ),
    )


def application() -> Tidings:
    rt = Tidings(config())

    @rt.on_publish("none:*")
    async def as_sent(ctx: PublishContext, data: dict[str, Any]) -> None:
        return None

    @rt.on_publish("shape:*")
    async def reshape(ctx: PublishContext, data: Message) -> Shout:
        return Shout(data.text, data.n, loud=True)

    rt.channel("typed:*", schema=Message)

    @rt.rpc("echo")
    async def echo(ctx: RPCContext, params: Message) -> Message:
        return params

    return rt


async def time_commands(client: TestClient, kind: str, commands: int) -> float:
    """Seconds per command for ``commands`` commands sent back to back (awaiting each)."""
    payload = {"text": "hello", "n": 1}
    started = time.perf_counter()
    if kind == "rpc":
        for _ in range(commands):
            await client.rpc("echo", payload)
    else:
        channel = f"{kind}:bench"
        for _ in range(commands):
            await client.publish(channel, payload)
    return (time.perf_counter() - started) / commands


async def main(commands: int, rounds: int) -> None:
    rt = application()
    kinds = ["plain", "none", "shape", "typed", "rpc"]
    best: dict[str, float] = {}
    async with TestClient(rt) as client:
        for kind in kinds:  # warm up
            await time_commands(client, kind, 200)
        for _ in range(rounds):
            for kind in kinds:
                spent = await time_commands(client, kind, commands)
                best[kind] = min(best.get(kind, spent), spent)
    base = best["plain"]
    labels = {
        "plain": "publish, namespace rules (no handler)",
        "none": "publish, on_publish -> None (dict)",
        "shape": "publish, on_publish Struct -> Struct",
        "typed": "publish, typed channel (schema check)",
        "rpc": "rpc, Struct -> Struct",
    }
    print(f"{'command':<42} {'us/command':>11} {'vs no handler':>14}")
    for kind in kinds:
        extra = "" if kind in ("plain", "rpc") else f"+{(best[kind] - base) * 1e6:.1f} us"
        print(f"{labels[kind]:<42} {best[kind] * 1e6:>11.1f} {extra:>14}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.commands, args.rounds))
    except ImportError:
        asyncio.run(main(args.commands, args.rounds))
