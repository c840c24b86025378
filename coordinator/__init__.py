"""Labelweave coordinator: commands in, events out, over gRPC."""

__version__ = "0.1.0"
