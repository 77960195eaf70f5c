"""Foundry Appliance: an air-gapped AI platform in one process."""

__version__ = "0.1.0"
