"""Test-wide settings: no progress bars in test logs."""

import os

os.environ.setdefault("COL775_NO_PROGRESS", "1")
