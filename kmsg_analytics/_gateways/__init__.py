"""Real gateway clients: SOLAPI and IWINV as providers the polling runner can ask.

:class:`SolapiProvider` and :class:`IwinvProvider` answer ``get_delivery_status``
(``async``) from the gateways' HTTP APIs, with timeouts, pooled keep-alive connections,
a rate limit per endpoint and errors classified for retrying (:mod:`._http`); SOLAPI
asks the checks that run at the same time in one request.
:func:`load_gateways_config` reads their settings from keyword arguments, a
``gateways.toml`` or the environment; :func:`capture_send` turns a gateway's send answer
into ``record_send`` input.

Examples
--------
>>> from kmsg_analytics._gateways import SolapiProvider
>>> with SolapiProvider("my-api-key", "my-api-secret") as solapi:
...     print(solapi.id, solapi.base_url)
solapi https://api.solapi.com
"""

from __future__ import annotations

from ._http import GatewayCheck, HttpSettings, RateLimiter, Secret
from .capture import SendRejectedError, capture_send
from .config import GatewaysConfig, IwinvConfig, SolapiConfig, load_gateways_config
from .iwinv import IwinvProvider
from .solapi import SolapiProvider

__all__ = [
    "GatewayCheck",
    "GatewaysConfig",
    "HttpSettings",
    "IwinvConfig",
    "IwinvProvider",
    "RateLimiter",
    "Secret",
    "SendRejectedError",
    "SolapiConfig",
    "SolapiProvider",
    "capture_send",
    "load_gateways_config",
]
