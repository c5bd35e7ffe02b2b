"""Rendering: numbers into markdown, CSV and figures (no files written here)."""
