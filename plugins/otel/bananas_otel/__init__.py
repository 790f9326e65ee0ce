"""bananas-otel: OpenTelemetry spans for the submission and each run of every bananas job."""

from bananas_otel.plugin import TRACE_KEY, OtelPlugin, inject

__version__ = "0.1.0"

__all__ = ["TRACE_KEY", "OtelPlugin", "inject"]
