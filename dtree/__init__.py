"""dtree: see and tune block-diffusion draft trees (DFlash drafter, DDTree, CaDDTree) on a real model."""

__version__ = "0.1.0"
