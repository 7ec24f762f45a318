"""Shared fixtures. Real servers are started by fixture modules under tests/servers/ (one per server)."""
import pykka
import pytest

pytest_plugins = [
    "tests.servers.nats",
    "tests.servers.s3",
    "tests.servers.mongo",
    "tests.servers.docker",
    "tests.servers.kube",
]


@pytest.fixture(autouse=True)
def _stop_all_actors():
    yield
    pykka.ActorRegistry.stop_all(timeout=10)
