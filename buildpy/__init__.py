"""buildpy: a daemonless image build system and Dockerfile compiler."""

__version__ = "0.1.0"
