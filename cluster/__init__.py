"""Cluster configs (``*.yaml``) and launch helpers for local and remote Ray clusters."""
