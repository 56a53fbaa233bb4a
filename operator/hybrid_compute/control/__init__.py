"""The control loop's I/O: kopf handlers, observe (API objects to a View), act
(writes), leader election, probes and telemetry polling."""
