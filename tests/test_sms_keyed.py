"""gateway.sms.keyed: the HMAC keyed once and copied per message gives exactly hmac.new's digest."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from gateway.sms.keyed import KeyedHmac, keyed_hmac


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_same_digest_as_hmac_new(key_length: int) -> None:
    key = os.urandom(key_length)
    for message in (b"", b"+31612345678", os.urandom(1000)):
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        assert KeyedHmac(key).hexdigest(message) == expected
        assert keyed_hmac(key).hexdigest(message) == expected
    # The repr is a fixed text, so it can never show the key. (A substring check on the key's
    # hex was flaky: a one-byte key such as 0xed occurs in "Keyed".)
    assert repr(keyed_hmac(key)) == "KeyedHmac(...)"
    assert str(keyed_hmac(key)) == "KeyedHmac(...)"
