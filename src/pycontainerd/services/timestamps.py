"""Nanosecond times to and from protobuf Timestamps."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def to_pb(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def from_pb(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.ToNanoseconds())
