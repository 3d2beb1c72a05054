"""The content-addressed store: sha256 blobs, manifests, configs, indexes, refs, locks, gc, OCI
and docker-archive import/export, compression, safe layer unpacking. Imports nothing else of
buildpy.
"""
