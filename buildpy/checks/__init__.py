"""Build checks (lint rules) over the front end's instructions. May import: grammar.
"""
