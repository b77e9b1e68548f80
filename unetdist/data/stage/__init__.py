"""Shared storage -> node-local copy: copy+hash, lock, wait for local rank 0."""
