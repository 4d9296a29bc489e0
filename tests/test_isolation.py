"""The test suite keeps what it writes out of the checkout (issue 24, item 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cache import cache_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module_cache() -> Path:
    """Where a fixture wider than one test caches images (it runs before the test's own
    working directory is set, so in the directory pytest started in: often the checkout)."""
    return cache_dir()


def test_a_fixture_wider_than_a_test_caches_images_outside_the_checkout(module_cache):
    assert not module_cache.is_relative_to(ROOT), module_cache


def test_a_test_caches_images_in_its_own_folder(tmp_path):
    assert cache_dir().is_relative_to(tmp_path)
