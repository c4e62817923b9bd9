"""Ablation sweeps (a grid of recipes, locally or as a SLURM array) and paper reproductions
(``*.yaml`` here: a sweep, its checks against the paper, a report)."""
