"""Benchmarks: ghz against the triage server and a bare echo server, in one run."""
