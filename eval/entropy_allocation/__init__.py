"""The `entropy_allocation` evaluate module (script, card and the math in allocation.py)."""
