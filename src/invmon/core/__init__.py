"""Shared helpers with no heavy dependency: stage settings, progress lines, HTML reports."""
