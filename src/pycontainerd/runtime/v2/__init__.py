"""Runtime v2: the daemon side of containerd's shim API."""
