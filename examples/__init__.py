"""Example applications on tidings, each run with ``tidings serve examples.NAME.app:rt``."""
