"""Benchmarks that a user or a test may call; they return dicts and never print (tools/ scripts print)."""
