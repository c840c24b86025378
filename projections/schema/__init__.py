"""Versioned CQL migrations of the Cassandra projection store (applied by `projections.migrate`)."""
