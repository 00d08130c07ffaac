"""Fixtures shared by several test files."""
import pytest

from tiny_run import make_tiny_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny generated category `tiny` (64 px: 24 normal training images, 8 normal + 12 defective test images)."""
    return make_tiny_data(tmp_path_factory)
