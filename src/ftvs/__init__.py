"""ftvs: fine-tuning vs. from-scratch, a controlled study of decoder-only text classifiers."""

__version__ = "0.1.0"
