"""Order checks, percentiles and ratios of the load generator."""

from __future__ import annotations

import math

import pytest

from tidings.bench import stats

pytestmark = pytest.mark.timeout(10)


class TestAdvanceSequence:
    def test_in_order(self) -> None:
        assert stats.advance_sequence(1, [1, 2, 3]) == (4, 0, 0)

    def test_gap_is_skipped_and_passed(self) -> None:
        assert stats.advance_sequence(1, [1, 4, 5]) == (6, 2, 0)

    def test_duplicate_is_backward(self) -> None:
        assert stats.advance_sequence(1, [1, 2, 2, 3]) == (4, 0, 1)

    def test_reordering_counts_a_skip_and_a_late_arrival(self) -> None:
        assert stats.advance_sequence(1, [2, 1, 3]) == (4, 1, 1)

    def test_empty(self) -> None:
        assert stats.advance_sequence(7, []) == (7, 0, 0)


class TestCheckDeliveries:
    def test_all_complete(self) -> None:
        check = stats.check_deliveries([(5, 6, 0, 0), (5, 6, 0, 0)], expected_each=5)
        assert check.ok
        assert check.complete == 2

    def test_missing_and_extra_are_totalled(self) -> None:
        check = stats.check_deliveries([(3, 4, 0, 0), (6, 6, 0, 1), (5, 6, 0, 0)], expected_each=5)
        assert not check.ok
        assert check.missing == 2
        assert check.extra == 1
        assert check.backward == 1
        assert check.complete == 1

    def test_right_count_but_wrong_order_is_not_complete(self) -> None:
        check = stats.check_deliveries([(3, 4, 1, 1)], expected_each=3)
        assert not check.ok
        assert check.as_dict()["skipped"] == 1

    def test_no_receivers_with_nothing_expected(self) -> None:
        assert stats.check_deliveries([], expected_each=0).ok


class TestPercentiles:
    def test_nearest_rank(self) -> None:
        values = list(range(1, 101))
        assert stats.percentile(values, 0.5) == 50
        assert stats.percentile(values, 0.99) == 99
        assert stats.percentile(values, 1.0) == 100
        assert stats.percentile(values, 0.0) == 1

    def test_empty_is_nan(self) -> None:
        assert math.isnan(stats.percentile([], 0.5))

    def test_fraction_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="between 0 and 1"):
            stats.percentile([1], 50)

    def test_latency_summary_in_milliseconds(self) -> None:
        summary = stats.latency_summary([3_000_000, 1_000_000, 2_000_000])
        assert summary["count"] == 3
        assert summary["p50_ms"] == pytest.approx(2.0)
        assert summary["max_ms"] == pytest.approx(3.0)
        assert summary["mean_ms"] == pytest.approx(2.0)

    def test_latency_summary_of_nothing(self) -> None:
        assert stats.latency_summary([]) == {"count": 0}


class TestNumbers:
    def test_rate(self) -> None:
        assert stats.per_second(10, 2) == 5
        assert math.isnan(stats.per_second(10, 0))

    @pytest.mark.parametrize(
        ("value", "reference", "expected"),
        [(2.0, 1.0, 2.0), (None, 1.0, None), (1.0, 0.0, None), (math.nan, 1.0, None)],
    )
    def test_ratio(self, value: float | None, reference: float, expected: float | None) -> None:
        assert stats.ratio(value, reference) == expected

    @pytest.mark.parametrize(
        ("value", "text"),
        [(1234567.8, "1,234,568"), (12.345, "12.3"), (0.0123, "0.0123"), (0, "0"), (None, "-")],
    )
    def test_format_number(self, value: float | None, text: str) -> None:
        assert stats.format_number(value) == text
