"""The network edge: HTTP parsing, routes, the server API and the standalone server."""
