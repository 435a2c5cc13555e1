"""otlp-triage: an OpenTelemetry log processor that classifies where each record's traffic came
from and downgrades known monitor-triggered noise errors, forwarding everything else unchanged."""

__version__ = "0.1.0"
