"""Searches over the estimator: what fits (`fit`) and what to change when it does not (`advice`)."""
