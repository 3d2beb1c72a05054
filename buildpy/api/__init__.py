"""The Docker Engine API over a Unix socket, calling what the CLI calls.
"""
