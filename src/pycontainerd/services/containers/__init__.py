"""The Containers service: container records (configuration, not processes)."""
