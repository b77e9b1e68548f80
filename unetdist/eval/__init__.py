"""Evaluation: sliding-window inference, metrics, predict, export, plots."""
