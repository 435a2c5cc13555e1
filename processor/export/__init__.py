"""Thin I/O shell to the backend: transports (gRPC, HTTP, stdout) and the retrying sender."""

from .sender import Exporter
from .transports import make_transport

__all__ = ["Exporter", "make_transport"]
