"""Fixtures shared by the gateway tests."""

from tests.http_server import fhir_server  # noqa: F401 (a fixture, offered to the delivery tests)
