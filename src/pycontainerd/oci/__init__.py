"""OCI runtime specs for containers: containerd's default Linux spec and ``with_*`` options."""

from pycontainerd.oci.spec import (
    SPEC_TYPE_URL,
    Spec,
    SpecOpt,
    generate_spec,
    spec_from_any,
    spec_to_any,
)

__all__ = ["SPEC_TYPE_URL", "Spec", "SpecOpt", "generate_spec", "spec_from_any", "spec_to_any"]
