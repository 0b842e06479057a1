"""Hydra configs, shipped as package data so ``pkg://configs`` resolves wherever run.py lives."""
