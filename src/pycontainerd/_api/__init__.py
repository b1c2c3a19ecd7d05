"""Generated protobuf packages. Do not edit; run `make protos`."""
