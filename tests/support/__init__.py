"""Helpers every suite may import: plain functions and classes, no fixtures and no tests.

Fixtures live in ``conftest.py`` files (the ones several suites share in
``tests/conftest.py``); what a fixture or a test calls lives here, so no test
module imports another and no suite imports another suite's ``conftest``.

* :mod:`.polling`: the one poll with a deadline.
* :mod:`.redis`: the shared Redis (URL, reachability, key cleanup) and private
  ``redis-server`` processes (standalone, cluster, sentinel).
* :mod:`.http`: one raw HTTP/1.1 request, and a server API call.
* :mod:`.streams`: event-stream and newline-delimited JSON readers.
* :mod:`.keys` and :mod:`.jwks`: asymmetric signing keys and a JWKS endpoint.
"""
