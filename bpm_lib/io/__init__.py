"""I/O: images, manifests, storage URIs, datasets, caches and tracking."""
