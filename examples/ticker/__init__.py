"""A market ticker: 500 simulated symbols, a live board and chart, orders and fills (README.md)."""
