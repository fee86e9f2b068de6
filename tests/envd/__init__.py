"""envd tests."""
