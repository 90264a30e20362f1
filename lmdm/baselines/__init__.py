"""Baselines the LMDM is measured against."""
