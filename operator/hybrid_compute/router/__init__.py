"""The router module shipped to LiteLLM (``hybrid_router.py``), kept importable
here so its pure decision logic is tested like the rest of the operator."""
