"""The clicks-to-Dice benchmark's scoring (bench/interactive.py): NoC, drops, missed lesions recovered by a click."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "interactive.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_interactive", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clicks_to_reach_counts_clicks_and_gives_the_maximum_when_never_reached(bench):
    assert bench.clicks_to_reach([0.70, 0.86, 0.91], 0.85) == 1
    assert bench.clicks_to_reach([0.92, 0.80, 0.95], 0.90) == 0
    assert bench.clicks_to_reach([0.1, 0.2, 0.3], 0.85) == 2


def test_summary_counts_drops_missed_cases_and_recovered_lesions(bench):
    curves = [[0.80, 0.88, 0.87], [0.0, 0.6, 0.9], [0.05, 0.2, 0.3]]
    summary = bench.summarise(curves, [0.1, 0.2, 0.3, 0.4], [None, 0.8, 0.4])
    assert summary["n"] == 3 and summary["clicks_that_lowered_dice"] == 1
    assert summary["missed_cases"] == 2 and summary["missed_recovered_by_one_click"] == 1
    assert summary["missed_lesion_half_recovered_by_one_click"] == 1
    assert summary["missed_lesion_recall_after_one_click"] == pytest.approx(0.6)
    assert summary["noc85"] == pytest.approx((1 + 2 + 2) / 3, abs=0.01)


def test_clicked_lesion_recall_measures_only_the_lesion_under_the_click(bench):
    truth = np.zeros((1, 20, 20), dtype=bool)
    truth[0, 2:6, 2:6] = True  # 16 voxels
    truth[0, 12:18, 12:18] = True
    mask = np.zeros_like(truth)
    mask[0, 2:4, 2:6] = True
    assert bench.clicked_lesion_recall(mask, truth, (0, 3, 3)) == pytest.approx(0.5)
    assert bench.clicked_lesion_recall(mask, truth, (0, 15, 15)) == 0.0


def test_wrong_reports_give_every_case_another_report_that_names_a_target(bench):
    target, empty = np.ones((1, 2, 2), dtype=bool), np.zeros((1, 2, 2), dtype=bool)
    cases = [("a", None, "left", target), ("b", None, "right", target), ("c", None, "No focal lesion.", empty), ("d", None, "left", target)]
    moved = bench.with_wrong_reports(cases)
    assert [case[0] for case in moved] == ["a", "b", "c", "d"]
    assert all(new[2] != old[2] for new, old in zip(moved, cases))
    assert all(new[2] != "No focal lesion." for new in moved)
