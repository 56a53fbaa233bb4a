"""The control loop's I/O: kopf handlers, observe (API objects and signals to a
View), diff (the writes a plan needs, pure), act (performs them through kube), leader
election, probes and telemetry polling."""
