"""The sans-I/O protocol core: typed messages and their JSON codec. No asyncio here."""
