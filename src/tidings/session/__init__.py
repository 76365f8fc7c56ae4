"""One client connection over any transport: :class:`Session` and its parts.

* :mod:`~tidings.session.connection`: the state machine, input queue, output, timers;
* :mod:`~tidings.session.commands`: one function per client command;
* :mod:`~tidings.session.subscriptions`: opening, going live, leaving, expiring;
* :mod:`~tidings.session.transport`: what a session needs from its connection.
"""

from tidings.session.connection import Session
from tidings.session.subscriptions import Subscription
from tidings.session.transport import RequestInfo, Transport

__all__ = ["RequestInfo", "Session", "Subscription", "Transport"]
