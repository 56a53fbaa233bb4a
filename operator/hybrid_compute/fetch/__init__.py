"""Downloads a slot's model file onto its node (the ``hybrid-compute fetch`` step)."""
