"""Running a plan: parallel steps, COPY/ADD/RUN and metadata operations, progress. May import:
planner, sandbox, cas, registry.
"""
