"""Test support: fixture data, servers and the shared pytest plugin (`tests.support.fixtures`)."""
