"""The operator's HTTP servers: the state and demand API for routers, Prometheus
metrics and the admission webhook."""
