"""gRPC services: ``local.py`` holds the logic (callable in-process), ``service.py`` the
thin grpc.aio adapter, ``plugin.py`` the registrations."""
