"""Notebook 03's measures and the figures of every step: ``metrics`` (ROC-AUC, PR, the threshold,
pixel ROC-AUC and AUPRO) and ``plotting``."""
