"""The control loop's I/O: kopf handlers, the loop, observe (API objects and signals
to a View), diff (the writes a plan needs, pure), act (performs them through kube),
the state and demand API the routers talk to, leader election, probes and telemetry
polling."""
