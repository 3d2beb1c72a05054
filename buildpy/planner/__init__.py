"""Stages, ARG/ENV scoping, the step DAG, cache keys, .dockerignore and context hashing. May
import: grammar, cas.
"""
