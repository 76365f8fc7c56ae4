"""Cost and size of a fossil delta for a 2 KB JSON document with a few changed fields.

A delta is created once per channel (or map key) per publication, never per
recipient, so this per-publication cost is what delta compression adds to a
publish. Sizes are those on the JSON wire, where the delta (or the full
payload, for a subscriber that negotiated delta) travels as a JSON string.

    .venv/bin/python benchmarks/fossil_delta.py [--fields 3] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from tidings.protocol import fossil


def document(rng: random.Random) -> dict[str, object]:
    """About 2 KB: a quote board of 29 levels, as a ticker would publish it."""
    return {
        "symbol": "ACME",
        "venue": "XNAS",
        "quotes": {f"level{i}": {"bid": rng.random(), "ask": rng.random()} for i in range(29)},
        "note": "last trade in the opening auction",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=3, help="fields changed per update")
    parser.add_argument("--rounds", type=int, default=2000, help="create() calls per sample")
    args = parser.parse_args()

    rng = random.Random(1)
    doc = document(rng)
    source = json.dumps(doc, separators=(",", ":")).encode()
    quotes = doc["quotes"]
    assert isinstance(quotes, dict)
    for level in rng.sample(sorted(quotes), args.fields):
        quotes[level]["bid"] = rng.random()
    target = json.dumps(doc, separators=(",", ":")).encode()
    delta = fossil.create(source, target)
    assert fossil.apply(source, delta) == target

    samples = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(args.rounds):
            fossil.create(source, target)
        samples.append((time.perf_counter() - started) / args.rounds * 1e6)
    full_wire = len(json.dumps(target.decode()))
    delta_wire = len(json.dumps(delta.decode()))
    print(f"document        {len(target)} bytes, {args.fields} fields changed")
    median = statistics.median(samples)
    print(f"create()        {min(samples):.1f} µs (min of 7), median {median:.1f}")
    print(f"delta           {len(delta)} bytes")
    print(f"on the JSON wire: full {full_wire} bytes, delta {delta_wire} bytes")


if __name__ == "__main__":
    main()
