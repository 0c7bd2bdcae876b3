"""One error root for the whole system.

``InputError`` subclasses mean the caller sent something wrong (never retried, mapped to
INVALID_ARGUMENT / a DLQ entry); ``RetriableError`` subclasses mean a dependency was
unreachable or busy (retried with backoff, mapped to UNAVAILABLE).
"""

from __future__ import annotations


class LongRetrieverError(Exception):
    """Root of every error this package raises on purpose."""

    retriable: bool = False


class InputError(LongRetrieverError):
    """The input is invalid; retrying the same input cannot succeed."""


class RetriableError(LongRetrieverError):
    """A dependency failed or timed out; the same call may succeed later."""

    retriable = True


class ConfigError(InputError):
    """Settings or files given on the command line are invalid."""


class BundleError(InputError):
    """A model bundle is missing, tampered with, or does not match."""


class ServiceUnavailable(RetriableError):
    """Kafka, Milvus or the state store cannot be reached."""


class RemoteError(LongRetrieverError):
    """A remote endpoint failed a call for a reason of its own (gRPC INTERNAL, UNIMPLEMENTED,
    ...): neither the caller's input nor, as far as we know, a transient outage."""
