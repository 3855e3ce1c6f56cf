"""Every media test runs under the network guard."""

from tests.multimodal.fixtures import network_guard, server

__all__ = ["network_guard", "server"]
