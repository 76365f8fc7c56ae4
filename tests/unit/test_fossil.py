"""Fossil delta: our deltas against the npm ``fossil-delta`` package, and round trips.

The npm package is the one centrifuge-js bundles to apply deltas, so a delta it
applies is a delta every JavaScript client applies. The cross-checks run it
under Node.js once per test with a whole batch of cases.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.protocol import fossil
from tidings.protocol.fossil import DeltaError

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

NODE_SCRIPT = """
import { createDelta, applyDelta } from "fossil-delta";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const { create, apply } = JSON.parse(input);
const bytes = (text) => Buffer.from(text, "base64");
const text = (array) => Buffer.from(array).toString("base64");
const result = {
  created: create.map(([source, target]) => text(createDelta(bytes(source), bytes(target)))),
  applied: apply.map(([source, delta]) => {
    try {
      return text(applyDelta(bytes(source), bytes(delta)));
    } catch (error) {
      return "error: " + error.message;
    }
  }),
};
process.stdout.write(JSON.stringify(result));
"""


def npm_fossil(
    create: list[tuple[bytes, bytes]], apply: list[tuple[bytes, bytes]]
) -> tuple[list[bytes], list[bytes | str]]:
    """npm ``createDelta`` on each ``(source, target)`` and ``applyDelta`` on each
    ``(source, delta)`` (an error comes back as a string)."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    if not (REPO / "node_modules" / "fossil-delta" / "package.json").is_file():
        pytest.skip(f"npm package fossil-delta is not installed (run `npm ci` in {REPO})")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    request = {
        "create": [[b64(s), b64(t)] for s, t in create],
        "apply": [[b64(s), b64(d)] for s, d in apply],
    }
    done = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    result = json.loads(done.stdout)
    applied: list[bytes | str] = [
        item if item.startswith("error: ") else base64.b64decode(item) for item in result["applied"]
    ]
    return [base64.b64decode(item) for item in result["created"]], applied


def ticker_document(rng: random.Random, fields: int = 60) -> dict[str, object]:
    return {
        "symbol": "ACME",
        "venue": "XNAS",
        "quotes": {f"level{i}": {"bid": rng.random(), "ask": rng.random()} for i in range(fields)},
        "note": "last trade in the opening auction",
    }


def edited(rng: random.Random, source: bytes) -> bytes:
    """``source`` with a few random insertions, deletions and moved chunks."""
    target = bytearray(source)
    for _ in range(rng.randint(0, 8)):
        where = rng.randint(0, len(target))
        roll = rng.random()
        if roll < 0.4:
            target[where:where] = rng.randbytes(rng.randint(1, 24))
        elif roll < 0.7:
            del target[where : where + rng.randint(1, 24)]
        else:
            start = rng.randint(0, len(source))
            target[where:where] = source[start : start + rng.randint(1, 64)]
    return bytes(target)


def cases() -> list[tuple[bytes, bytes]]:
    """Edge cases, JSON documents with a few changed fields, and random edits."""
    rng = random.Random(11)
    fixed = [
        (b"", b""),
        (b"", b"new"),
        (b"old", b""),
        (b"exactly16bytes!!", b"exactly16bytes!!"),  # NHASH: still one literal
        (b"seventeen bytes!!", b"seventeen bytes!!"),
        (b"A" * 1000, b"A" * 1000),
        (b"A" * 1000, b"A" * 999 + b"B"),
        (b"abc" * 300, b"abd" * 300),
        ("prix: 12,50 € — été".encode() * 20, "prix: 12,60 € — hiver".encode() * 20),
        (bytes(range(256)) * 4, bytes(reversed(range(256))) * 4),
    ]
    documents = []
    for _ in range(20):
        document = ticker_document(rng, rng.randint(1, 80))
        before = json.dumps(document).encode()
        quotes = document["quotes"]
        assert isinstance(quotes, dict)
        for level in rng.sample(sorted(quotes), min(3, len(quotes))):
            quotes[level]["bid"] = rng.random()
        documents.append((before, json.dumps(document).encode()))
    randoms = []
    for _ in range(150):
        alphabet = rng.choice([b"ab", b"abcdefgh", bytes(range(256))])
        source = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
        randoms.append((source, edited(rng, source)))
    return fixed + documents + randoms


# --------------------------------------------------------------------------- against npm


@pytest.mark.node
def test_deltas_match_npm_byte_for_byte_and_apply_both_ways() -> None:
    pairs = cases()
    ours = [fossil.create(source, target) for source, target in pairs]
    npm_created, npm_applied = npm_fossil(
        pairs, [(source, delta) for (source, _), delta in zip(pairs, ours, strict=True)]
    )
    for (source, target), mine, theirs, applied in zip(
        pairs, ours, npm_created, npm_applied, strict=True
    ):
        assert applied == target  # npm applies ours
        assert fossil.apply(source, theirs) == target  # we apply npm's
        assert mine == theirs


@pytest.mark.node
def test_npm_rejects_what_we_reject() -> None:
    source = b"the quick brown fox jumps over the lazy dog"
    target = b"the quick brown cat jumps over the lazy dog!"
    good = fossil.create(source, target)
    corrupt = [
        good[:-1],  # no terminating ';'
        good.replace(b"cat", b"cow"),  # checksum no longer matches
        b"5\n9@0,1T;",  # copy longer than the target
        b"z\n4@zz,0;",  # copy past the end of the source
        b"3\n5:abc0;",  # insert longer than the delta
        b"3\n3:abc?",  # unknown operator
    ]
    _, applied = npm_fossil([], [(source, delta) for delta in corrupt])
    for delta, outcome in zip(corrupt, applied, strict=True):
        assert isinstance(outcome, str) and outcome.startswith("error: "), delta
        with pytest.raises(DeltaError):
            fossil.apply(source, delta)


# --------------------------------------------------------------------------- format


def test_known_delta() -> None:
    # Checked against npm fossil-delta 2.0.0 (test above).
    source = b"The quick brown fox jumps over the lazy dog, again and again."
    target = b"The quick brown cat jumps over the lazy dog, again and again!"
    # Copy 16 bytes from 0, insert "cat", copy 40 from 19, insert "!", checksum.
    delta = b"y\nG@0,3:cate@J,1:!3qlnBO;"
    assert fossil.create(source, target) == delta
    assert fossil.apply(source, delta) == target


def test_small_sources_give_one_literal() -> None:
    delta = fossil.create(b"tiny", b"something else")
    assert delta == b"E\nE:something else" + fossil_int(fossil.checksum(b"something else")) + b";"
    assert fossil.target_size(delta) == 14


def fossil_int(value: int) -> bytes:
    digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
    out = b""
    while True:
        out = digits[value % 64 : value % 64 + 1] + out
        value //= 64
        if not value:
            return out


def test_checksum_is_the_sum_of_big_endian_words() -> None:
    assert fossil.checksum(b"") == 0
    assert fossil.checksum(b"\x01\x02\x03\x04") == 0x01020304
    assert fossil.checksum(b"\x01\x02\x03\x04\x05") == 0x01020304 + 0x05000000
    assert fossil.checksum(b"\xff" * 8) == (0xFFFFFFFF * 2) & 0xFFFFFFFF
    assert fossil.checksum(b"\x00\x00\x01") == 0x100


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (b"", "base-64 integer"),
        (b"3", "unterminated"),
        (b"3:", "not terminated by"),
        (b"3\n3:abc", "unterminated"),
        (b"3\n3:ab", "exceeds size of delta"),
        (b"3\n4:abcd0;", "larger than predicted"),
        (b"3\n4@0,", "copy exceeds output"),
        (b"9\n9@0,0;", "past end of input"),
        (b"3\n3:abc1;", "bad checksum"),
        (b"4\n3:abc" + fossil_int(fossil.checksum(b"abc")) + b";", "does not match predicted"),
        (b"3\n3!abc", "unknown delta operator"),
        (b"3\n1@0;", "not terminated by ','"),
    ],
)
def test_apply_rejects_malformed_deltas(delta: bytes, message: str) -> None:
    with pytest.raises(DeltaError, match=message):
        fossil.apply(b"abcdefgh", delta)


# --------------------------------------------------------------------------- properties


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_apply_inverts_create_on_unrelated_data(source: bytes, target: bytes) -> None:
    assert fossil.apply(source, fossil.create(source, target)) == target


@given(st.binary(min_size=0, max_size=800), st.randoms(use_true_random=False))
def test_apply_inverts_create_on_edits(source: bytes, rng: random.Random) -> None:
    target = edited(rng, source)
    delta = fossil.create(source, target)
    assert fossil.apply(source, delta) == target
    assert fossil.target_size(delta) == len(target)


@given(st.text(max_size=300), st.text(max_size=300))
def test_json_deltas_are_text_or_absent(before: str, after: str) -> None:
    source, target = json.dumps({"v": before}).encode(), json.dumps({"v": after}).encode()
    delta = fossil.create_for_json(source, target)
    if delta is None:
        return
    assert len(delta) < len(target)
    # What a JSON client does: the delta arrives as a string and is re-encoded as UTF-8.
    carried = json.loads(json.dumps(delta.decode())).encode()
    assert fossil.apply(source, carried) == target


def test_json_delta_falls_back_when_a_copy_would_split_a_character() -> None:
    source = '{"order":"one large café au lait, sans sucre, merci"}'.encode()
    target = '{"order":"one large cafè au lait, sans sucre, merci"}'.encode()  # é -> è
    delta = fossil.create(source, target)
    # The first copy ends after 0xC3, shared by é and è; the literal is a lone 0xA8.
    assert delta == b"r\nO@0,1:\xa8T@P,1JIxR~;"
    assert fossil.apply(source, delta) == target
    assert fossil.create_for_json(source, target) is None


def test_json_delta_falls_back_when_not_smaller() -> None:
    source = json.dumps({"v": "x" * 40}).encode()
    target = json.dumps({"v": "y" * 40}).encode()
    assert fossil.create_for_json(source, target) is None


def test_few_changed_fields_of_a_2kb_document_make_a_small_delta() -> None:
    rng = random.Random(5)
    document = ticker_document(rng, 29)
    source = json.dumps(document).encode()
    quotes = document["quotes"]
    assert isinstance(quotes, dict)
    quotes["level3"]["bid"] = 0.5
    quotes["level17"]["ask"] = 0.25
    target = json.dumps(document).encode()
    assert 1900 < len(source) < 2200
    delta = fossil.create_for_json(source, target)
    assert delta is not None and len(delta) < 80
    assert fossil.apply(source, delta) == target
