"""The OCI distribution client: pull, push of missing blobs, auth, the remote build cache. May
import: cas.
"""
