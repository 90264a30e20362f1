"""Evaluation lenses over decoded audio (LMDM issue "Honest ears"): level, notes (an in-house transcriber), distribution
distances with their sample size, noise floor and confidence intervals, and adherence."""
