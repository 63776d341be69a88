"""Tabby: Calico-style networking and network policy."""

__version__ = "0.1.0"
