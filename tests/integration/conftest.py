"""Fixtures shared by the integration tests of the serving path."""

from tests.fixtures.serving import reliability_bundle, reliability_server  # noqa: F401
