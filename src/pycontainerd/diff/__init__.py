"""Differs: apply layers to mounts, and compare mounts into layers."""
