"""Linux namespace sandboxes: rootfs from layer snapshots, mounts, id maps, cgroups, one process,
its change as a layer. May import: cas.
"""
