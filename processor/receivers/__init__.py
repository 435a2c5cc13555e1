"""Thin I/O shells: OTLP/gRPC and OTLP/HTTP in front of the one Intake."""
