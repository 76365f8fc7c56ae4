"""tidings: a real-time messaging server for Python, speaking the Centrifugo client protocol."""

from tidings.config import Config, load_config
from tidings.errors import Disconnect, DisconnectCode, Error, ErrorCode
from tidings.node import Node, PublishResult
from tidings.version import __version__

__all__ = [
    "Config",
    "Disconnect",
    "DisconnectCode",
    "Error",
    "ErrorCode",
    "Node",
    "PublishResult",
    "__version__",
    "load_config",
]
