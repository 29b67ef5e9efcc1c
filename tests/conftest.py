import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if ROOT not in sys.path:        # run from a checkout without installing
    sys.path.insert(0, ROOT)
if TESTS not in sys.path:       # shared helpers such as gradient_check
    sys.path.insert(0, TESTS)

GOLDEN = os.path.join(TESTS, "golden")


@pytest.fixture
def golden_dir():
    return GOLDEN
