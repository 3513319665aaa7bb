"""Figures drawn from plain data (results entries, tensors) as PNG files; see figures/base.py.

Import the module of the figure you need (vitrobust.figures.adversarial, ...): importing one pulls in
matplotlib, which the rest of vitrobust does not need at import time.
"""
