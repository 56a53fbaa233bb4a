"""The GPU telemetry agent: reads NVML on one node and serves Prometheus metrics and a
JSON snapshot the operator uses to see memory held by processes it did not start.

It runs as a DaemonSet on GPU nodes (``hybrid-compute agent``) or inside the
operator for a single-node install (``hybrid-compute run --gpu-agent=local``).
"""
