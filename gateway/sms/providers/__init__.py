"""SMS and voice providers (issue 3, item 4); see `gateway.sms.providers.base`."""

from __future__ import annotations

from gateway.sms.providers.base import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    OutgoingMessage,
    Provider,
    ProviderError,
    ProviderReceipt,
    ProviderTimeout,
    SmsProvider,
    Timeouts,
    VoiceProvider,
    build_providers,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
    "OutgoingMessage",
    "Provider",
    "ProviderError",
    "ProviderReceipt",
    "ProviderTimeout",
    "SmsProvider",
    "Timeouts",
    "VoiceProvider",
    "build_providers",
]
