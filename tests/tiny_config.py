"""The tiny test config as a config file, for CLI tests (see conftest.tiny_config)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config():
    return tiny_config()
