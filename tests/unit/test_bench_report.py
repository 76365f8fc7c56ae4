"""Turning scenario results into rows, ratios, chart panels and the results page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidings.bench import report
from tidings.bench.results import ScenarioResult
from tidings.bench.scenarios import Settings, pacing

pytestmark = pytest.mark.timeout(10)

CHECK_OK = {"ok": True}


def result(target: str, label: str, **metrics: float) -> ScenarioResult:
    scenario = label[0]
    return ScenarioResult(target, scenario, label, metrics=dict(metrics), check=CHECK_OK)


def sample() -> list[ScenarioResult]:
    return [
        result("reference", "A@1000", deliveries_per_s=100.0, publications_per_s=0.1),
        result("reference", "C@1000", rss_per_connection_kib=10.0),
        ScenarioResult("reference", "E", "E@1000", skipped="no rooms"),
        result("tidings", "A@1000", deliveries_per_s=400.0, publications_per_s=0.4),
        result("tidings", "C@1000", rss_per_connection_kib=5.0),
        result("tidings", "E@1000", deliveries_per_s=50.0, p50_ms=1.0, p99_ms=2.0),
        result("tidings", "F@1000 1 worker", deliveries_per_s=80.0),
        result("tidings", "F@1000 2 workers", deliveries_per_s=120.0),
    ]


class TestRows:
    def test_ratio_is_tidings_over_reference(self) -> None:
        rows = {(row.label, row.metric.key): row for row in report.comparison_rows(sample())}
        assert rows[("A@1000", "deliveries_per_s")].ratio == pytest.approx(4.0)
        assert rows[("C@1000", "rss_per_connection_kib")].ratio == pytest.approx(0.5)
        assert rows[("C@1000", "rss_per_connection_kib")].metric.better == "lower"

    def test_skipped_reference_gives_no_ratio(self) -> None:
        rows = {(row.label, row.metric.key): row for row in report.comparison_rows(sample())}
        row = rows[("E@1000", "deliveries_per_s")]
        assert row.values == {"reference": None, "tidings": 50.0}
        assert row.ratio is None

    def test_scenario_f_compares_with_one_worker(self) -> None:
        rows = {(row.label, row.metric.key): row for row in report.comparison_rows(sample())}
        two = rows[("F@1000 2 workers", "deliveries_per_s")]
        assert two.ratio == pytest.approx(1.5)
        assert two.baseline == "F@1000 1 worker"
        assert rows[("F@1000 1 worker", "deliveries_per_s")].ratio is None

    def test_scenario_m_compares_map_updates_with_plain_publications(self) -> None:
        runs = [
            result("reference", "M@1000 plain", deliveries_per_s=10.0),
            result("tidings", "M@1000 plain", deliveries_per_s=400.0),
            result("tidings", "M@1000 map", deliveries_per_s=300.0),
        ]
        rows = {(row.label, row.metric.key): row for row in report.comparison_rows(runs)}
        mapped = rows[("M@1000 map", "deliveries_per_s")]
        assert mapped.baseline == "M@1000 plain" and mapped.ratio == pytest.approx(0.75)
        assert rows[("M@1000 plain", "deliveries_per_s")].ratio == pytest.approx(40.0)

    def test_failed_check_is_kept_with_its_verdict(self) -> None:
        broken = result("tidings", "A@1000", deliveries_per_s=1.0)
        broken.check = {"ok": False}
        [row, *_] = report.comparison_rows([broken])
        assert row.ok == {"tidings": False}


class TestChart:
    def test_panels_merge_worker_counts_and_skip_implied_figures(self) -> None:
        panels = report.chart_panels(sample())
        titles = [panel.title for panel in panels]
        assert not any("publications/s" in title for title in titles)
        [scaling] = [panel for panel in panels if panel.title.startswith("F@1000")]
        assert scaling.bars == [("1 worker", 80.0), ("2 workers", 120.0)]
        [throughput] = [panel for panel in panels if panel.title.startswith("A@1000")]
        assert throughput.bars == [("reference", 100.0), ("tidings", 400.0)]
        assert "4.00x" in throughput.title

    def test_draws_a_png(self, tmp_path: Path) -> None:
        pytest.importorskip("matplotlib")
        path = tmp_path / "chart.png"
        report.draw_chart(path, sample())
        assert path.read_bytes().startswith(b"\x89PNG")


class TestPage:
    def test_markdown_links_the_chart_relatively(self, tmp_path: Path) -> None:
        page = tmp_path / "docs" / "benchmarks.md"
        chart = tmp_path / "docs" / "benchmarks.png"
        report.write_markdown(page, sample(), {"cpu_model": "x"}, {}, chart)
        text = page.read_text()
        assert "![benchmark chart](benchmarks.png)" in text
        assert "| A@1000 | deliveries/s | 100/s | 400/s | 4.00x | higher |" in text
        assert str(tmp_path) not in text

    def test_errors_become_one_line_without_machine_paths(self) -> None:
        text = (
            "tidings server exited with 1 before listening:\n"
            'Traceback:\n  File "/home/someone/venv/lib/x.py", line 3\n'
            "ModuleNotFoundError: No module named 'x'"
        )
        line = report.one_line(text)
        assert line == (
            "tidings server exited with 1 before listening: ... "
            "ModuleNotFoundError: No module named 'x'"
        )
        assert report.one_line("see /srv/data/file.log at ws://127.0.0.1:80/a/b") == (
            "see file.log at ws://127.0.0.1:80/a/b"
        )

    def test_json_round_trip(self, tmp_path: Path) -> None:
        path = tmp_path / "bench.json"
        document = report.suite_document(sample(), {"cpu_model": "x"}, {"spawn": True})
        report.write_json(path, document)
        loaded = json.loads(path.read_text())
        again = [ScenarioResult.from_dict(item) for item in loaded["results"]]
        assert again == sample()
        assert loaded["comparison"][0]["ratio"] == pytest.approx(4.0)


class TestPacing:
    def test_window_holds_a_quarter_million_deliveries(self) -> None:
        assert pacing(Settings(), 1000) == (262, 524)
        assert pacing(Settings(), 10000) == (26, 52)

    def test_window_bounds_and_overrides(self) -> None:
        assert pacing(Settings(), 1) == (1024, 2048)
        assert pacing(Settings(), 1_000_000) == (4, 8)
        assert pacing(Settings(window=10, lag_limit=15), 1000) == (10, 15)


class TestSections:
    """The page's generated part is rewritten; the sections other scripts keep are not."""

    PAGE = (
        "# Benchmarks\n\nold table\n\n<!-- one -->\n## One\n\nfirst\n\n"
        "<!-- two -->\n## Two\n\nsecond\n"
    )

    def test_rewriting_the_page_keeps_the_marked_sections(self, tmp_path: Path) -> None:
        page = tmp_path / "benchmarks.md"
        page.write_text(self.PAGE)
        report.write_markdown(page, sample(), {"cpu_model": "x"}, {}, None)
        text = page.read_text()
        assert "old table" not in text
        assert "| A@1000 | deliveries/s | 100/s | 400/s | 4.00x | higher |" in text
        assert text.endswith("\n<!-- one -->\n## One\n\nfirst\n\n<!-- two -->\n## Two\n\nsecond\n")

    def test_a_section_is_replaced_in_place_up_to_the_next_marker(self) -> None:
        text = report.replace_section(self.PAGE, "<!-- one -->", "<!-- one -->\n## One\n\nnew\n")
        assert "first" not in text
        assert "<!-- one -->\n## One\n\nnew\n\n<!-- two -->\n## Two\n\nsecond\n" in text

    def test_the_last_section_is_replaced_to_the_end(self) -> None:
        text = report.replace_section(self.PAGE, "<!-- two -->", "<!-- two -->\n## Two\n\nnew\n")
        assert text.endswith("first\n\n<!-- two -->\n## Two\n\nnew\n")

    def test_a_new_section_is_appended(self) -> None:
        text = report.replace_section(self.PAGE, "<!-- three -->", "<!-- three -->\n## Three\n")
        assert text.endswith("second\n\n<!-- three -->\n## Three\n")
