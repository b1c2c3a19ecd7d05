"""Images: manifests, media types, and image archives."""
