"""The operator's HTTP servers that stand on their own: Prometheus metrics and the
admission webhook. (The state and demand API feeds the control loop, so it lives in
:mod:`hybrid_compute.control.state_api`.)"""
