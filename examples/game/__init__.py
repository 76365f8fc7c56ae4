"""A small multiplayer arena with a server-authoritative game loop (see README.md)."""
