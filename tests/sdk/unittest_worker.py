"""Run unittest tests by id and write one JSON line per outcome (subtests included).

    python unittest_worker.py --list START_DIR
    python unittest_worker.py --run START_DIR OUT_FILE TEST_ID...

Used by ``tests/sdk/run.py`` inside the directory of an SDK's test suite, one
process per test so that a test which hangs (the SDKs reconnect forever and some
of their tests await a publication without a deadline) costs its own timeout
only. Each outcome is written and flushed as it happens, so the subtests that
finished before a hang still count.
"""

from __future__ import annotations

import json
import os
import sys
import unittest
from collections.abc import Iterator
from typing import Any, TextIO


def iterate(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestCase):
        yield suite
        return
    for item in suite:
        yield from iterate(item)


class LineResult(unittest.TestResult):
    """Writes ``{"id", "subtest", "outcome", "detail"}`` per test and per subtest."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self.subtests_seen: set[str] = set()

    def emit(self, test: Any, outcome: str, detail: str = "", subtest: str = "") -> None:
        record = {"id": test.id(), "subtest": subtest, "outcome": outcome, "detail": detail[-3000:]}
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.emit(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self.emit(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self.emit(test, "failed", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.emit(test, "skipped", reason)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        params = subtest._subDescription()
        outcome = "passed" if err is None else "failed"
        detail = "" if err is None else self._exc_info_to_string(err, test)
        self.emit(test, outcome, detail, subtest=params)


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.getcwd())  # the suite's directory: its tests/ and the SDK package
    if argv[0] == "--list":
        suite = unittest.defaultTestLoader.discover(argv[1], top_level_dir=".")
        for test in iterate(suite):
            print(test.id())
        return 0
    start_dir, out_file, ids = argv[1], argv[2], argv[3:]
    del start_dir
    suite = unittest.defaultTestLoader.loadTestsFromNames(ids)
    with open(out_file, "a", encoding="utf-8") as out:
        suite.run(LineResult(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
