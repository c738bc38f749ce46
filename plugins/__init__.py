"""Built-in plugins of the scoring runtime."""
