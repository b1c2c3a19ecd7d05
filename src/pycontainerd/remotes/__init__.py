"""The registry client (OCI distribution spec): references, auth, hosts, resolve, fetch, push.

Protocol decisions (reference grammar, challenge parsing, hosts.toml) are sans-I/O in
``reference``, ``auth`` and ``hosts``; ``resolver``, ``fetcher`` and ``pusher`` move bytes
with httpx.
"""
