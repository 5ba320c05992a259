"""Readers of other frameworks' checkpoints."""
