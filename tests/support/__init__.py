"""Helpers shared by the test modules (imported as `support.*`; `tests/` is on `sys.path`)."""
