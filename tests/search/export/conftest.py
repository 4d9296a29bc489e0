"""Fixtures the export tests share: one finished digits study and its top-1 export."""

from __future__ import annotations

import pytest

from tests.support.export_study import DigitsStudy, build_digits_study


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsStudy:
    """The study, run once per test session (test_export.py and test_predict.py share it)."""
    return build_digits_study(tmp_path_factory.mktemp("digits"))
