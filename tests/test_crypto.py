from __future__ import annotations

import pytest

from gateway.crypto import SealError, seal, unseal
from gateway.settings import Settings


def test_seal_round_trip_and_binding(settings: Settings) -> None:
    sealed = seal(settings, "totp", "JBSWY3DPEHPK3PXP")
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert unseal(settings, "totp", sealed) == "JBSWY3DPEHPK3PXP"
    assert seal(settings, "totp", "x") != seal(settings, "totp", "x")  # fresh nonce
    with pytest.raises(SealError):
        unseal(settings, "other-purpose", sealed)
    other = settings.with_overrides(secret_key=b"another-secret-" + b"y" * 40)
    with pytest.raises(SealError):
        unseal(other, "totp", sealed)


@pytest.mark.parametrize("garbage", ["", "v1.", "v1.!!!", "v2.abcd", "v1." + "A" * 40])
def test_garbage_refused(settings: Settings, garbage: str) -> None:
    with pytest.raises(SealError):
        unseal(settings, "totp", garbage)
