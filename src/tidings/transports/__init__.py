"""Transport adapters: each turns one kind of connection into frames for a session."""
