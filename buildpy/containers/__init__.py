"""run, ps, commit, volumes and the image tree. May import: sandbox, cas, registry.
"""
