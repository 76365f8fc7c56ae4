"""The hub's fan-out cost per delivery, in process: what delta and conflation must not change.

1,000 subscribers on one channel, each a C-level no-op writer (no socket: this
isolates the hub's Python work from the kernel's send). Each round queues a batch of
publications and lets the event loop flush it; the figure is CPU time per
delivery (publication x subscriber), the best of several samples, so other load on
the machine inflates it less than it inflates end-to-end throughput. Run it on two
checkouts to compare their hot paths::

    PYTHONPATH=src .venv/bin/python benchmarks/hub_fanout.py [--subscribers 1000] [--batch 4]

``--delta N`` makes N of the subscribers negotiate delta compression (the branch that
implements it only), to show what they cost next to the plain ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time

import uvloop
from msgspec import Raw

from tidings.hub import Hub
from tidings.protocol.codec import prepare_publication
from tidings.protocol.messages import Publication, StreamPosition
from tidings.protocol.wire import JSON_WIRE, WireFormat

PAYLOAD = Raw(b'{"s":1,"t":81234567890123,"p":0,"x":"' + b"x" * 62 + b'"}')  # 100 bytes


class Subscriber:
    __slots__ = ("writer",)

    wire: WireFormat = JSON_WIRE

    def __init__(self) -> None:
        self.writer = collections.deque(maxlen=0).append  # C, keeps nothing

    def insufficient_state(self, channel: str) -> None:
        raise AssertionError("no publication is lost here")


async def sample(subscribers: int, batch: int, rounds: int, delta: int) -> float:
    hub = Hub()
    for index in range(subscribers):
        subscriber = Subscriber()
        hub.begin_subscribe("c", subscriber)
        extra = {"delta": True} if index < delta else {}
        hub.complete_subscribe(
            "c",
            subscriber,
            join_leave=False,
            positioned=True,
            position=StreamPosition(0, ""),
            **extra,
        )
    offset = 0
    started = time.process_time()
    for _ in range(rounds):
        for _ in range(batch):
            offset += 1
            publication = Publication(data=PAYLOAD, offset=offset)
            extra = {"delta": True} if delta else {}
            hub.broadcast_publication("c", prepare_publication("c", publication, "E", **extra))
        await asyncio.sleep(0)  # the hub flushes at the end of the loop turn
    elapsed = time.process_time() - started
    return elapsed / (rounds * batch * subscribers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4, help="publications per flush")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--delta", type=int, default=0, help="subscribers with delta")
    args = parser.parse_args()
    results = [
        uvloop.run(sample(args.subscribers, args.batch, args.rounds, args.delta))
        for _ in range(args.samples)
    ]
    best, median = min(results) * 1e9, statistics.median(results) * 1e9
    print(f"{args.subscribers} subscribers, {args.batch} publications per flush")
    print(f"CPU per delivery: {best:.1f} ns (best of {args.samples}), median {median:.1f} ns")


if __name__ == "__main__":
    main()
