"""Snapshotters: the filesystems containers run on, built layer by layer."""
