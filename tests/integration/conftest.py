"""tests/integration/conftest.py - pytest fixtures: a running cluster per test module."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Cluster  # noqa: E402


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()
