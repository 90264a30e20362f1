"""Measuring streams: the embedding classifier and drift over time."""
