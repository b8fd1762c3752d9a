"""HMAC-SHA256 under a fixed key, for the hashes every send computes (limits keys, the number's
and the text's HMAC, the code's HMAC).

The standard library's HMAC, keyed once per key and copied per message (`hmac.HMAC.copy`):
a new HMAC context per message costs twice as much (OpenSSL 3 looks the algorithm up again
for every one). The digest is the one `hmac.new(key, message, hashlib.sha256)` gives.
"""

from __future__ import annotations

import functools
import hmac


class KeyedHmac:
    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod="sha256")

    def __repr__(self) -> str:  # never the key
        return "KeyedHmac(...)"

    def hexdigest(self, message: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.hexdigest()


@functools.lru_cache(maxsize=64)
def keyed_hmac(key: bytes) -> KeyedHmac:
    """The `KeyedHmac` of `key`; keys are derived per purpose (`Settings.derive_key`), so few."""
    return KeyedHmac(key)
