"""Daemon assembly: plugin initialisation, the gRPC listener, shutdown."""
