"""Live progress display (rich): what runs, how far it got, and who is busy.

Rendering happens on rich's refresh thread twice a second; it only reads
counters, so the event loop that does the measuring never waits for it. On a
non-terminal output (``make bench`` into a log) phases are printed as lines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tidings.bench.client import Tally
from tidings.bench.stats import format_number
from tidings.bench.system import rss_bytes, tree_cpu_seconds, tree_rss_bytes


class Progress:
    """One line of context (target, scenario, phase) plus live counters."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.live_enabled = enabled and console.is_terminal
        self.print_phases = enabled and not console.is_terminal
        self.title = ""
        self.phase_text = ""
        self.phase_deadline: float | None = None
        self.tally: Tally | None = None
        self.connections_target = 0
        self.published: Callable[[], int] | None = None
        self.server_pid: int | None = None
        self._live: Live | None = None
        self._last: tuple[float, int, float, float] | None = None

    def start(self, title: str, *, server_pid: int | None = None) -> None:
        self.title = title
        self.server_pid = server_pid
        self.tally = None
        self.published = None
        self.phase_text = ""
        self.phase_deadline = None
        self._last = None
        if self.print_phases:
            self.console.print(f"[bold]{title}[/bold]")
        if self.live_enabled:
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=2,
                transient=True,
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def phase(self, text: str, *, seconds: float | None = None) -> None:
        self.phase_text = text
        self.phase_deadline = time.monotonic() + seconds if seconds else None
        if self.print_phases:
            self.console.print(f"  {text}")

    def watch(
        self,
        tally: Tally,
        *,
        connections: int = 0,
        published: Callable[[], int] | None = None,
    ) -> None:
        self.tally = tally
        self.connections_target = connections
        self.published = published

    def _render(self) -> Any:
        now = time.monotonic()
        generator_cpu = time.process_time()
        delivered = self.tally.delivered if self.tally is not None else 0
        server_cpu = tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        rates = ("-", "-", "-")
        if self._last is not None:
            then, before, generator_before, server_before = self._last
            elapsed = now - then
            if elapsed > 0:
                rates = (
                    format_number((delivered - before) / elapsed),
                    f"{(generator_cpu - generator_before) / elapsed:.0%}",
                    f"{(server_cpu - server_before) / elapsed:.0%}" if self.server_pid else "-",
                )
        self._last = (now, delivered, generator_cpu, server_cpu)
        phase = self.phase_text
        if self.phase_deadline is not None:
            phase += f" ({max(0.0, self.phase_deadline - now):.0f} s left)"
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column()
        table.add_row("phase", phase)
        tally = self.tally
        if tally is not None:
            table.add_row(
                "connections",
                f"{tally.ready:,} ready of {self.connections_target:,}, {tally.lost:,} lost",
            )
            if self.published is not None:
                table.add_row("published", f"{self.published():,}")
            table.add_row("delivered", f"{delivered:,}  ({rates[0]}/s)")
            problems = sum(tally.problems.values())
            table.add_row("problems", f"{problems:,}" if problems else "none")
        table.add_row("generator CPU", rates[1])
        if self.server_pid:
            rss = tree_rss_bytes(self.server_pid)
            table.add_row(
                "server", f"CPU {rates[2]}, RSS {rss / 2**20:,.0f} MiB (pid {self.server_pid})"
            )
        table.add_row("generator RSS", f"{rss_bytes(os.getpid()) / 2**20:,.0f} MiB")
        return Group(Text(self.title, style="bold"), table)
