"""The training engine: config tree, data wiring, the loop, optimizer, schedule, checkpoints,
distributed setup, losses, logging and held-out evaluation. Imports nothing else of ``recipes``."""
