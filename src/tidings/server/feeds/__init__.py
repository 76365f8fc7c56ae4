"""Subscribers that are not client sessions: ``/events`` (SSE) and ``/longpoll``.

They implement the hub's :class:`~tidings.hub.Subscriber` interface and render
publications their own way from the prepared pushes (no JSON is decoded
again), above the node and below the HTTP routes.
"""
