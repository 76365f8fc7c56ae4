"""Engines that carry traffic between nodes and keep history and presence."""
