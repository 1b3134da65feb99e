"""Fixtures of the run-folder tests."""

import pytest

from tests.core.tiny_resnet import Launcher


@pytest.fixture(scope="session")
def launcher():
    """One helper process that starts `col775` commands (see tiny_resnet), shared by every test."""
    started = Launcher()
    yield started
    started.close()


@pytest.fixture(scope="session")
def resnet_cache(tmp_path_factory):
    """Where the tiny resnet runs keep their generated images, made once for all of them."""
    return tmp_path_factory.mktemp("resnet-cache")
