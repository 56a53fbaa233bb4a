"""Pure builders of what the operator writes: the children of slots and workloads,
and the LiteLLM files."""
