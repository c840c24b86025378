"""Consumers of the event log: the projection runner and the rebuild tool."""
