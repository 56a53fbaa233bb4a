"""The seed's cost math and the measured usage it can start from."""
