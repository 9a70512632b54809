"""Core of the cardiomegaly pipeline: feature names, image handling, datasets and the CLI.

The TFX-facing packages (`pipeline`, `components`, `trainer`) build on this one.
"""
__version__ = "0.1.0"
