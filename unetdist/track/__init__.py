"""Tracking and reporting: local JSONL, W&B, run info, the HTML report."""
