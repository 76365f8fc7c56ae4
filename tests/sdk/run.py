"""Run the SDKs' own test suites against ``tidings serve`` (``make sdk-suites``).

    .venv/bin/python tests/sdk/run.py [--only python|js] [--js-src DIR] [--timeout 30]

What it does:

1. starts ``tidings serve --config tests/sdk/tidings-sdk.toml`` on 127.0.0.1:8000
   (the suites hard-code ``localhost:8000``, as their CI runs Centrifugo there);
2. centrifuge-python: downloads the published sdist of the pinned version from
   PyPI into ``.cache/sdk`` (it ships its ``tests/``), and runs its unittest suite,
   one process per test module; a test that does not finish there runs again in a
   process of its own with ``--timeout`` seconds, because the SDK reconnects forever
   and some tests await a publication with no deadline;
3. centrifuge-js: its Jest suite is not published (the npm package ships only
   ``build/`` and ``dist/``), so it runs only when ``--js-src`` names a checkout of
   centrifuge-js whose dependencies are installed; otherwise it is reported as not
   run;
4. reads ``tests/sdk/excluded.txt``: what is listed there is not run (Python: the
   test is skipped; Jest: whole files are left out with ``--testPathIgnorePatterns``,
   single tests with a ``--testNamePattern`` that matches every other name), so it
   cannot disturb the tests that count, every one of which must pass. Python
   subtests cannot be left out one by one: the test runs and the listed subtests'
   outcomes do not count.

Prints each failure with its traceback, then a summary per suite and one closing
line, and exits 1 when a test that counts failed. Every Python outcome, subtests
included, is kept in ``.cache/sdk/run/python-records.jsonl``; Jest's report in
``.cache/sdk/run/jest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "sdk"
CONFIG = HERE / "tidings-sdk.toml"
EXCLUDED = HERE / "excluded.txt"
WORKER = HERE / "unittest_worker.py"

CENTRIFUGE_PYTHON = "0.7.0"
"""The centrifuge-python release whose sdist (tests included) is run; the test extra installs
the same version (pyproject.toml), whose package the suite imports from the sdist."""

PORT = 8000


@dataclass
class Outcome:
    """What one test came to: passed, failed (with why), or excluded (did not count)."""

    suite: str
    test: str
    status: str
    detail: str = ""


@dataclass
class Exclusions:
    """``tests/sdk/excluded.txt``: ``<suite> <test id or name> | <reason>`` per line."""

    reasons: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Exclusions:
        reasons = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry, separator, reason = line.partition(" | ")
            suite, _, test = entry.partition(" ")
            if not separator or suite not in ("python", "js") or not test or not reason.strip():
                raise SystemExit(f"{path}:{number}: expected '<python|js> <test> | <reason>'")
            reasons[(suite, test.strip())] = reason.strip()
        return cls(reasons)

    def reason(self, suite: str, test: str) -> str | None:
        return self.reasons.get((suite, test))


# --------------------------------------------------------------------------- the server


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def tidings_server(log: Path) -> Iterator[None]:
    if port_in_use(PORT):
        raise SystemExit(f"port {PORT} is taken: the SDK suites need it (they hard-code it)")
    tidings = Path(sys.executable).with_name("tidings")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(tidings), "serve", "--config", str(CONFIG)], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while not port_in_use(PORT):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"tidings serve did not start; see {log}")
                time.sleep(0.05)
            yield
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --------------------------------------------------------------------------- centrifuge-python


def python_suite_dir() -> Path:
    """The pinned sdist from PyPI, unpacked once into .cache/sdk."""
    target = CACHE / f"centrifuge_python-{CENTRIFUGE_PYTHON}"
    if (target / "tests").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(CACHE),
            f"centrifuge-python=={CENTRIFUGE_PYTHON}",
        ],
        check=False,
    )
    if download.returncode != 0:
        raise SystemExit(
            f"could not download the sdist of centrifuge-python=={CENTRIFUGE_PYTHON} from "
            "PyPI (pip says why above): the Python SDK suite did not run"
        )
    archive = CACHE / f"centrifuge_python-{CENTRIFUGE_PYTHON}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return target


MODULE_SECONDS_PER_TEST = 5.0
"""What one module's process may take per test, on top of ``--timeout``: its tests take
under a second each but a few (reconnects, token expiry) a few seconds."""


def run_python_suite(
    exclusions: Exclusions, timeout: float, work: Path, suite_dir: Path | None = None
) -> list[Outcome]:
    """Each test module in one process (its tests share the interpreter start, ~0.25 s a
    process); a test that did not finish there (the module timed out or the process died)
    runs again in a process of its own with ``timeout`` seconds, so a hang costs itself.
    ``suite_dir``: a unittest suite's directory (its ``tests/``); by default the pinned
    centrifuge-python sdist."""
    suite_dir = suite_dir or python_suite_dir()
    listed = subprocess.run(
        [sys.executable, str(WORKER), "--list", "tests"],
        cwd=suite_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outcomes = []
    modules: dict[str, list[str]] = {}
    for test_id in listed:
        reason = exclusions.reason("python", test_id)
        if reason is not None:
            outcomes.append(Outcome("python", test_id, "excluded", reason))
        else:
            modules.setdefault(test_id.rsplit(".", 2)[0], []).append(test_id)
    done = 0
    for module, test_ids in modules.items():
        budget = timeout + MODULE_SECONDS_PER_TEST * len(test_ids)
        records, timed_out = run_python_tests(suite_dir, test_ids, budget, work)
        for test_id in test_ids:
            mine = records.get(test_id, [])
            finished = any(not record["subtest"] for record in mine)
            failed = any(record["outcome"] == "failed" for record in mine)
            single_timed_out = False
            if not finished and (timed_out or not failed):
                print(f"rerunning {test_id} alone: it did not finish with {module}", flush=True)
                alone, single_timed_out = run_python_tests(suite_dir, [test_id], timeout, work)
                mine = alone.get(test_id, [])
            outcome = judge_python_test(test_id, mine, single_timed_out, exclusions, timeout)
            done += 1
            print(f"[{done}/{len(listed)}] {outcome.status:8} {test_id}", flush=True)
            outcomes.append(outcome)
    return outcomes


def run_python_tests(
    suite_dir: Path, test_ids: list[str], timeout: float, work: Path
) -> tuple[dict[str, list[dict[str, str]]], bool]:
    """Run ``test_ids`` in one process: each one's records (in order), and whether the
    process was stopped at ``timeout``."""
    records_file = work / "record.jsonl"
    records_file.unlink(missing_ok=True)
    timed_out = False
    try:
        subprocess.run(
            [sys.executable, str(WORKER), "--run", "tests", str(records_file), *test_ids],
            cwd=suite_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        timed_out = True
    records: dict[str, list[dict[str, str]]] = {}
    if records_file.exists():
        text = records_file.read_text()
        with (work / "python-records.jsonl").open("a") as log:
            log.write(text)
        for line in text.splitlines():
            record = json.loads(line)
            records.setdefault(record["id"], []).append(record)
    return records, timed_out


def judge_python_test(
    test_id: str,
    records: list[dict[str, str]],
    timed_out: bool,
    exclusions: Exclusions,
    timeout: float,
) -> Outcome:
    """One test's outcome from its records; subtests listed in excluded.txt do not count."""
    failures = []
    passed_subtests = 0
    finished = False
    for record in records:
        name = f"{test_id} {record['subtest']}".strip()
        if record["subtest"] and exclusions.reason("python", name) is not None:
            continue
        if record["outcome"] == "failed":
            failures.append(f"{name}\n{record['detail']}")
        elif record["subtest"]:
            passed_subtests += 1
        if not record["subtest"]:
            finished = True
    if failures:
        return Outcome("python", test_id, "failed", "\n".join(failures))
    if timed_out and not finished:
        if passed_subtests and has_excluded_subtests(exclusions, test_id):
            # The counted subtests passed, then an excluded one (a Protobuf variant) hung.
            # The suites run the JSON variant first; a counted subtest that hung after the
            # excluded one would go unseen, which only lasts until the exclusion is lifted.
            return Outcome("python", test_id, "passed", "an excluded subtest did not finish")
        return Outcome("python", test_id, "failed", f"timed out after {timeout:.0f} s")
    if not finished and not records:
        return Outcome("python", test_id, "failed", "no result (the test process died)")
    if any(not record["subtest"] and record["outcome"] == "skipped" for record in records):
        return Outcome("python", test_id, "skipped")
    return Outcome("python", test_id, "passed")


def has_excluded_subtests(exclusions: Exclusions, test_id: str) -> bool:
    return any(
        suite == "python" and name.startswith(test_id + " (") for suite, name in exclusions.reasons
    )


# --------------------------------------------------------------------------- centrifuge-js


JS_TEST_FILE = re.compile(r"\.(test|spec)\.[cm]?[jt]sx?$")
"""An excluded.txt entry naming a whole Jest test file rather than one test."""

_JS_REGEX_SYNTAX = re.compile(r"[\\^$.*+?()[\]{}|/]")


def js_regex_literal(text: str) -> str:
    """``text`` as a JavaScript regular expression matching it literally (Jest compiles
    ``--testNamePattern`` with ``new RegExp(pattern, "i")``, no ``u`` flag)."""
    return _JS_REGEX_SYNTAX.sub(lambda match: "\\" + match.group(), text)


def jest_exclusion_args(exclusions: Exclusions) -> list[str]:
    """Jest options that keep what excluded.txt lists from running at all: whole files by
    ``--testPathIgnorePatterns`` (which replaces Jest's default, so ``/node_modules/``
    is repeated), single tests by a ``--testNamePattern`` that matches every full test
    name but the listed ones (a negative lookahead). An excluded test that does not run
    cannot leave timers behind that fail the tests after it."""
    files = [
        test for suite, test in exclusions.reasons if suite == "js" and JS_TEST_FILE.search(test)
    ]
    names = [
        test
        for suite, test in exclusions.reasons
        if suite == "js" and not JS_TEST_FILE.search(test)
    ]
    args = ["--testPathIgnorePatterns", "/node_modules/"]
    args += ["/" + js_regex_literal(name) + "$" for name in files]
    if names:
        alternatives = "|".join(js_regex_literal(name) for name in names)
        args.append(f"--testNamePattern=^(?!(?:{alternatives})$)")
    return args


def run_js_suite(source: Path, exclusions: Exclusions, work: Path) -> list[Outcome]:
    """Jest in a centrifuge-js checkout, minus what excluded.txt lists (not run at all)."""
    report = work / "jest.json"
    report.unlink(missing_ok=True)
    npx = shutil.which("npx") or "npx"
    subprocess.run(
        # --forceExit: the SDK's reconnect timers outlive some tests and keep Jest running.
        [
            npx,
            "jest",
            "--json",
            f"--outputFile={report}",
            "--runInBand",
            "--forceExit",
            *jest_exclusion_args(exclusions),
        ],
        cwd=source,
        check=False,
        env={**os.environ, "CI": "true"},
    )
    if not report.exists():
        return [Outcome("js", "jest", "failed", f"Jest wrote no report in {source}")]
    results = json.loads(report.read_text())
    outcomes = []
    seen: set[str] = set()
    for file_result in results["testResults"]:
        file_name = Path(file_result["name"]).name
        assertions = file_result["assertionResults"]
        if not assertions and file_result.get("message"):
            outcomes.append(Outcome("js", file_name, "failed", file_result["message"]))
        for assertion in assertions:
            name = assertion["fullName"]
            seen.add(name)
            reason = exclusions.reason("js", name)
            if reason is not None:
                outcomes.append(Outcome("js", name, "excluded", reason))
            elif assertion["status"] == "passed":
                outcomes.append(Outcome("js", name, "passed"))
            elif assertion["status"] in ("pending", "skipped", "todo", "disabled"):
                outcomes.append(Outcome("js", name, "skipped"))
            else:
                detail = "\n".join(assertion.get("failureMessages") or [])
                outcomes.append(Outcome("js", f"{file_name}: {name}", "failed", detail))
    for (suite, test), reason in exclusions.reasons.items():
        if suite != "js":
            continue
        if JS_TEST_FILE.search(test):
            outcomes.append(Outcome("js", test, "excluded file", reason))
        elif test not in seen:
            print(f"note: tests/sdk/excluded.txt lists a JS test the suite does not have: {test}")
    return outcomes


# --------------------------------------------------------------------------- report


def summarise(outcomes: list[Outcome], ran: set[str], exclusions: Exclusions) -> int:
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"\nFAILED [{outcome.suite}] {outcome.test}\n{outcome.detail}")
    print()
    for suite in ("python", "js"):
        mine = [o for o in outcomes if o.suite == suite]
        if suite not in ran:
            if suite == "python":
                print("python: not run (--only js)")
            else:
                print(
                    "js:     NOT RUN. centrifuge-js' Jest suite is not published: pass --js-src "
                    "DIR (make sdk-suites SDK_JS_SRC=DIR), a centrifuge-js checkout whose "
                    "dependencies are installed"
                )
            continue
        counts = {
            s: sum(o.status == s for o in mine)
            for s in ("passed", "failed", "excluded", "excluded file", "skipped")
        }
        excluded = f"{counts['excluded']} excluded"
        if counts["excluded file"]:
            excluded += f" (and {counts['excluded file']} whole files)"
        subtests = sum(s == suite and " (" in t for s, t in exclusions.reasons)
        if subtests:
            excluded += f" (and {subtests} subtests of counted tests)"
        print(
            f"{suite + ':':7} {counts['passed']} passed, {counts['failed']} failed, "
            f"{excluded} by tests/sdk/excluded.txt, {counts['skipped']} skipped by the suite"
        )
    passed = sum(o.status == "passed" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    print(f"sdk-suites: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("python", "js"))
    parser.add_argument("--js-src", type=Path, help="centrifuge-js checkout with its node_modules")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per Python test")
    args = parser.parse_args()
    exclusions = Exclusions.load(EXCLUDED)
    work = CACHE / "run"
    work.mkdir(parents=True, exist_ok=True)
    (work / "python-records.jsonl").unlink(missing_ok=True)
    outcomes: list[Outcome] = []
    ran = set()
    with tidings_server(work / "tidings.log"):
        if args.only in (None, "python"):
            outcomes += run_python_suite(exclusions, args.timeout, work)
            ran.add("python")
        if args.only in (None, "js") and args.js_src is not None:
            outcomes += run_js_suite(args.js_src.resolve(), exclusions, work)
            ran.add("js")
    return summarise(outcomes, ran, exclusions)


if __name__ == "__main__":
    sys.exit(main())
