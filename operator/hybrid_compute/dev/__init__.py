"""The local development cluster: control plane binaries and helm built from Go modules,
its PKI, simulated GPU nodes, what it bootstraps, and the serving tools the
integration tests run."""
