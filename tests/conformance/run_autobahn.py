"""``make conformance``: the Autobahn|Testsuite fuzzing client against the echo route.

Steps:

1. Find a Python 2.7 interpreter (``$PYTHON27``, pyenv's 2.7.x, or ``python2.7``
   on the PATH). Without one, print why and exit 0: the target is skipped.
2. Build (once, cached under ``.cache/autobahn/`` in the checkout) a Python 3
   venv holding ``virtualenv<20.22`` (the last release that makes 2.7
   environments), then a 2.7 virtualenv with ``autobahntestsuite`` and the
   pinned versions of what it needs (``wstest`` is Python 2 code).
3. Start ``tests/conformance/echo_server.py`` (the production WebSocket stack
   and limits) on a free port, run ``wstest -m fuzzingclient`` for cases
   1-7, 9, 12 and 13 (``--cases`` narrows it), and read ``index.json``.
4. A case passes when both ``behavior`` and ``behaviorClose`` are OK,
   NON-STRICT or INFORMATIONAL. Any other result must be in
   ``tests/conformance/allowlist.json`` (a reason per case, and the close
   code the server must have sent), or the run fails. Allow-listed cases
   that pass are reported so the list can shrink.

Exit status: 0 when every case passed or was allow-listed (or on skip), 1 otherwise.
Reports land in ``reports/conformance/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "autobahn"
REPORTS = ROOT / "reports" / "conformance"
ALLOWLIST = HERE / "allowlist.json"

DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "12.*", "13.*"]
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

# wstest 25.10.1 is Python 2 code; these are the last releases of its
# dependencies that still run on 2.7 (seen working together on this machine class).
PY27_REQUIREMENTS = [
    "txaio==2.1.0",
    "incremental==16.10.1",
    "pyOpenSSL==19.1.0",
    "cryptography==3.3.2",
    "Twisted==19.10.0",
    "zope.interface==4.6.0",
    "jinja2==2.11.3",
    "markupsafe==1.1.1",
    "Werkzeug==1.0.1",
    "klein==17.10.0",
    "service_identity==18.1.0",
    "unittest2==1.1.0",
    "six==1.16.0",
    "autobahn[twisted]==0.10.9",
]
AUTOBAHN_TESTSUITE = "autobahntestsuite==25.10.1"


def say(message: str) -> None:
    print(f"conformance: {message}", flush=True)


def find_python27() -> str | None:
    candidates: list[str] = []
    if os.environ.get("PYTHON27"):
        candidates.append(os.environ["PYTHON27"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root:
            versions = sorted(Path(root, "versions").glob("2.7*"), reverse=True)
            candidates += [str(version / "bin" / "python") for version in versions]
    for name in ("python2.7", "python2"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == "2.7":
            return candidate
    return None


def run(command: list[str], **kwargs: Any) -> None:
    say("$ " + " ".join(command))
    subprocess.run(command, check=True, **kwargs)


def ensure_wstest(python27: str) -> Path:
    """The cached 2.7 virtualenv's ``wstest``, built on first use."""
    tools = CACHE / "tools"
    env27 = CACHE / "py27"
    wstest = env27 / "bin" / "wstest"
    marker = env27 / ".tidings-installed"
    wanted = "\n".join([*PY27_REQUIREMENTS, AUTOBAHN_TESTSUITE, python27])
    if marker.is_file() and marker.read_text() == wanted and wstest.is_file():
        return wstest
    say("building the Python 2.7 environment for wstest (once; cached in .cache/autobahn)")
    shutil.rmtree(env27, ignore_errors=True)
    if not (tools / "bin" / "virtualenv").is_file():
        run([sys.executable, "-m", "venv", str(tools)])
        run([str(tools / "bin" / "pip"), "install", "--quiet", "virtualenv<20.22"])
    run([str(tools / "bin" / "virtualenv"), "--quiet", "-p", python27, str(env27)])
    pip = [str(env27 / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, *PY27_REQUIREMENTS])
    run([*pip, AUTOBAHN_TESTSUITE])
    marker.write_text(wanted)
    return wstest


def start_echo_server(max_message_size: int | None) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "tests.conformance.echo_server", "--port", "0"]
    if max_message_size:
        command += ["--max-message-size", str(max_message_size)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"listening on (\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"conformance: the echo server did not start ({line!r})")
    return process, int(match.group(1))


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def case_sort_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def evaluate(outdir: Path, agent: str) -> int:
    """Compare ``outdir/index.json`` with the allow-list; write ``summary.json`` beside it."""
    index = json.loads((outdir / "index.json").read_text())
    results: dict[str, dict[str, Any]] = index[agent]
    allowlist: dict[str, dict[str, Any]] = json.loads(ALLOWLIST.read_text())["cases"]
    counts: Counter[str] = Counter()
    unexpected: list[str] = []
    allowed: list[str] = []
    needlessly_allowed: list[str] = []
    for case in sorted(results, key=case_sort_key):
        result = results[case]
        behavior, close = result["behavior"], result["behaviorClose"]
        if behavior in PASSING and close in PASSING:
            counts[behavior] += 1
            if case in allowlist:
                needlessly_allowed.append(case)
            continue
        entry = allowlist.get(case)
        detail = json.loads((outdir / result["reportfile"]).read_text())
        remote_code = detail.get("remoteCloseCode")
        if entry is not None and entry.get("close_code") in (None, remote_code):
            counts["ALLOW-LISTED"] += 1
            allowed.append(case)
            continue
        counts["UNEXPECTED"] += 1
        unexpected.append(
            f"{case}: behavior={behavior} close={close} server close code={remote_code}"
            + (f" (allow-listed for {entry.get('close_code')})" if entry else "")
        )
    total = sum(counts.values())
    summary = {
        "agent": agent,
        "cases": total,
        "counts": dict(counts),
        "allow_listed": allowed,
        "unexpected": unexpected,
        "allow_listed_but_passed": needlessly_allowed,
    }
    (outdir.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(
        f"{total} cases: "
        + ", ".join(
            f"{counts[name]} {name}"
            for name in ("OK", "NON-STRICT", "INFORMATIONAL", "ALLOW-LISTED", "UNEXPECTED")
        )
    )
    by_reason: dict[str, list[str]] = {}
    for case in allowed:
        by_reason.setdefault(allowlist[case]["reason"], []).append(case)
    for reason, cases in by_reason.items():
        say(f"  allow-listed ({len(cases)}) {', '.join(cases)}: {reason}")
    for case in needlessly_allowed:
        say(f"  note: {case} is allow-listed but passed; the entry can go")
    for line in unexpected:
        say(f"  UNEXPECTED {line}")
    return 1 if unexpected else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Autobahn|Testsuite against tidings.")
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="case patterns")
    parser.add_argument(
        "--max-message-size", type=int, default=None, help="override the 64 KiB default"
    )
    parser.add_argument(
        "--evaluate-only", action="store_true", help="re-read the last reports; run nothing"
    )
    parser.add_argument("--reports", type=Path, default=REPORTS, help="where reports go")
    args = parser.parse_args(argv)
    reports: Path = args.reports.resolve()
    outdir = reports / "ws"
    agent = "tidings"
    if args.evaluate_only:
        return evaluate(outdir, agent)
    python27 = find_python27()
    if python27 is None:
        say(
            "SKIPPED: no Python 2.7 interpreter found (set PYTHON27, or install 2.7 with pyenv). "
            "wstest, the Autobahn|Testsuite client, is Python 2 code."
        )
        return 0
    wstest = ensure_wstest(python27)
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    server, port = start_echo_server(args.max_message_size)
    try:
        spec = {
            "outdir": str(outdir),
            "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}/echo"}],
            "cases": args.cases,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_path = reports / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        started = time.monotonic()
        log_path = reports / "wstest.log"
        say(f"running wstest on {' '.join(args.cases)} (output: {log_path})")
        with log_path.open("w") as log_file:
            subprocess.run(
                [str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
                cwd=reports,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=True,
            )
        say(f"wstest took {time.monotonic() - started:.0f} s")
    finally:
        stop(server)
    return evaluate(outdir, agent)


if __name__ == "__main__":
    sys.exit(main())
