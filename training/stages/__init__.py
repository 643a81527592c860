"""Trainer subclasses, one per training stage of the method (method.md section 3)."""
