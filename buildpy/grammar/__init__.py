"""The Dockerfile front end: text → nodes → typed instructions → stages; word expansion.

Imports nothing else of buildpy. See DEVELOPERS.md for its layers.
"""
