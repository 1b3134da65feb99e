"""Test-wide settings and fixtures."""

import os

import pytest
import torch

os.environ.setdefault("COL775_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: on a shared CPU, two threads that wait on each other
    make small recurrent models many times slower, and single-threaded results are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
