"""containerd's runtime v2 shim for runc, in Python: ``containerd-shim-pyrunc-v2``.

``main`` (the ``start``/``delete`` commands) imports only the standard library; the
ttrpc server and protobuf are imported by the forked server process only.
"""
