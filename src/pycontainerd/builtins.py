"""The plugins built into the daemon, in registration order (containerd's builtins.go)."""

from __future__ import annotations

from typing import Any

from pycontainerd.content import plugin as content_plugin
from pycontainerd.diff import plugin as diff_plugin
from pycontainerd.events import plugin as events_plugin
from pycontainerd.metadata import plugin as metadata_plugin
from pycontainerd.plugin import Registration
from pycontainerd.runtime.v2 import plugin as runtime_v2_plugin
from pycontainerd.services.containers import plugin as containers_service
from pycontainerd.services.content import plugin as content_service
from pycontainerd.services.diff import plugin as diff_service
from pycontainerd.services.events import plugin as events_service
from pycontainerd.services.healthcheck import plugin as healthcheck_service
from pycontainerd.services.images import plugin as images_service
from pycontainerd.services.introspection import plugin as introspection_service
from pycontainerd.services.leases import plugin as leases_service
from pycontainerd.services.namespaces import plugin as namespaces_service
from pycontainerd.services.snapshots import plugin as snapshots_service
from pycontainerd.services.tasks import plugin as tasks_service
from pycontainerd.services.version import plugin as version_service
from pycontainerd.snapshots import plugin as snapshots_plugin


def registrations() -> list[Registration[Any, Any]]:
    return [
        content_plugin.REGISTRATION,
        snapshots_plugin.NATIVE,
        snapshots_plugin.OVERLAYFS,
        snapshots_plugin.BTRFS,
        metadata_plugin.REGISTRATION,
        diff_plugin.REGISTRATION,
        events_plugin.REGISTRATION,
        metadata_plugin.SCHEDULER,
        runtime_v2_plugin.REGISTRATION,
        introspection_service.LOCAL,
        images_service.LOCAL,
        containers_service.LOCAL,
        leases_service.LOCAL,
        namespaces_service.LOCAL,
        tasks_service.LOCAL,
        introspection_service.GRPC,
        containers_service.GRPC,
        content_service.GRPC,
        diff_service.GRPC,
        events_service.GRPC,
        healthcheck_service.GRPC,
        images_service.GRPC,
        leases_service.GRPC,
        namespaces_service.GRPC,
        snapshots_service.GRPC,
        tasks_service.GRPC,
        version_service.GRPC,
    ]
