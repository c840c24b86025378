"""Projections: read models built from the event log by pure view functions."""
