"""Fidelity tier: ports of the paper code's logic (john-hewitt/implicit-ins) against implicit-it, on tiny inputs."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/fidelity/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.fidelity)
