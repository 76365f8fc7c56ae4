"""A ~2 KB JSON document of which each update changes a few fields, sans I/O.

What delta compression is for: a quote board (29 price levels) where every
update moves ``fields`` of the 58 prices and bumps a sequence number. The
scenario measuring bytes on the wire with and without delta
(``tidings bench --scenario G``) publishes it, and the client-compatibility
tests use it to compare centrifuge-js with and without ``delta: 'fossil'``.
Deterministic: a seeded generator, so every run publishes the same documents.
"""

from __future__ import annotations

import json
import random
from typing import Any

LEVELS = 29


class QuoteBoard:
    """The successive states of one board, as compact JSON bytes (~2,000 bytes each)."""

    def __init__(self, *, seed: int = 1, fields: int = 3) -> None:
        self._rng = random.Random(seed)
        self._fields = fields
        rng = self._rng
        self.state: dict[str, Any] = {
            "symbol": "ACME",
            "venue": "XNAS",
            "seq": 0,
            "quotes": [
                {
                    "level": i,
                    "bid": round(rng.uniform(90, 100), 4),
                    "bid_size": rng.randrange(100, 10_000),
                    "ask": round(rng.uniform(100, 110), 4),
                    "ask_size": rng.randrange(100, 10_000),
                }
                for i in range(LEVELS)
            ],
            "note": "last trade in the opening auction",
        }

    def update(self) -> bytes:
        """Change ``fields`` prices and the sequence number; the new state's JSON."""
        rng = self._rng
        self.state["seq"] += 1
        quotes = self.state["quotes"]
        for _ in range(self._fields):
            level = quotes[rng.randrange(LEVELS)]
            side = rng.choice(("bid", "ask"))
            level[side] = round(level[side] + rng.uniform(-0.5, 0.5), 4)
        return json.dumps(self.state, separators=(",", ":")).encode()
