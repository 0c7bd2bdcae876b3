"""Fixtures shared by the integration tests of the serving path."""

from tests.integration.serving_harness import reliability_bundle, reliability_server  # noqa: F401
