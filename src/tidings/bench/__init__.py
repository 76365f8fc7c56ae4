"""The load generator behind ``tidings bench`` and ``make bench``.

One process on uvloop opens raw asyncio protocol clients
(:mod:`tidings.bench.client`) with a minimal client-side WebSocket framing
(:mod:`tidings.bench.wsframe`), so that a connection costs the generator less
than it costs the server it measures. Two kinds of server can be measured:

* ``tidings``: the Centrifugo JSON protocol. Each client connects and
  subscribes in its first frame, answers pings, and checks that publication
  offsets arrive as 1, 2, 3, ... exactly once.
* ``reference``: ``benchmarks/reference/server.js`` (express + http + ws),
  which sends every message it receives to every open client. The payload's
  sequence number is checked the same way.

Scenarios (:mod:`tidings.bench.scenarios`), sizes set with ``--subscribers``:

====  ==========================================================================
A     one channel, 1,000 and 10,000 subscribers, 100-byte payloads published as
      fast as the server accepts them: deliveries per second
B     1,000 subscribers, 200 publications/s for 10 s: publish-to-receive latency
      p50/p99/max
C     10,000 idle connections: server RSS per connection (needs ``--spawn`` or
      ``--server-pid``)
D     100,000 idle connections held for 60 s (capped by the open-files limit),
      then one publication to all: time to the last delivery
E     chat: 10,000 clients in 1,000 rooms of 10, every client publishing to its
      room in turn (tidings only: the reference has no rooms)
F     scenario A's workload with the Redis broker, tidings with 1 then 2 worker
      processes (``--spawn`` only)
====  ==========================================================================

Typical runs::

    tidings bench --spawn --target reference --target tidings --scenario A
    tidings bench --url ws://127.0.0.1:8000/connection/websocket --scenario B
    tidings bench --self-test          # the generator's own capacity
    python benchmarks/run.py           # what ``make bench`` does

The CLI group adds :data:`bench` as ``tidings bench``.
"""

from tidings.bench.cli import bench

__all__ = ["bench"]
