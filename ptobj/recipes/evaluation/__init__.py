"""Evaluations beyond held-out losses: the objectives' declared ones (infilling of held-out code)
and re-evaluating a saved run."""
