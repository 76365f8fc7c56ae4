"""What the generator reads from the operating system (Linux /proc): RSS, CPU, limits.

Memory per idle connection (scenario C) comes from the server process's
``VmRSS`` in ``/proc/PID/status``, summed over the process and its
descendants so that multi-worker servers are counted whole. CPU time comes
from ``/proc/PID/stat`` (utime + stime), likewise summed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
from importlib import metadata
from typing import Any

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, found through ``/proc/*/stat`` parent ids."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from ``VmRSS`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its descendants (worker processes)."""
    return sum(rss_bytes(each) for each in descendants(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name start at field 3 (state): utime is 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def all_cpu_seconds() -> dict[int, float]:
    """CPU time of every process on the machine, by PID (to see who else was busy)."""
    times: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return times
    for entry in entries:
        if entry.isdigit():
            times[int(entry)] = cpu_seconds(int(entry))
    return times


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants."""
    return sum(cpu_seconds(each) for each in descendants(pid))


def cpu_times(cpus: set[int]) -> tuple[int, int]:
    """``(busy, total)`` jiffies of ``cpus`` from ``/proc/stat`` (softirq time included).

    A process's own CPU time misses the kernel's receive work done on its core
    in softirq context; the core's busy share does not.
    """
    busy = total = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                if int(name[3:]) in cpus:
                    numbers = [int(value) for value in values[:8]]
                    idle = numbers[3] + numbers[4]
                    total += sum(numbers)
                    busy += sum(numbers) - idle
    except (OSError, ValueError):
        pass
    return busy, total


def own_cpus() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(soft, hard)``.

    Raising the hard limit itself needs CAP_SYS_RESOURCE, which containers often
    lack; the scenarios then size themselves to what the hard limit allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def ephemeral_ports() -> int:
    """How many local ports one source address can use for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = (int(part) for part in ports.read().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28232


def pin_to_cpus(cpus: str) -> set[int] | None:
    """Pin this process to ``cpus`` ("0", "0,1", "2-3"); return the set, None if unsupported."""
    wanted = parse_cpu_list(cpus)
    if not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, wanted)
    return wanted


def parse_cpu_list(cpus: str) -> set[int]:
    """Parse a taskset-style CPU list such as ``"0,2-3"``."""
    result: set[int] = set()
    for part in cpus.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            result.update(range(int(low), int(high) + 1))
        else:
            result.add(int(part))
    if not result:
        raise ValueError(f"expected a CPU list such as 0 or 0,1 or 0-3, got {cpus!r}")
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _command_version(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout or done.stderr).strip() or None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Where the numbers were measured: hardware, kernel, runtimes, limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "node": _command_version("node", "--version"),
        "tidings": _package_version("tidings"),
        "uvloop": _package_version("uvloop"),
        "msgspec": _package_version("msgspec"),
        "open_files_limit": {"soft": soft, "hard": hard},
        "ephemeral_ports": ephemeral_ports(),
        "generator_affinity": affinity,
    }
