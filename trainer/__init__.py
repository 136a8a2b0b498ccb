"""The trial side: the baseline train.py, attention backends, the trial runner and the GPU actor.

Imports judge helpers; never imports orchestrator."""
