"""Policy model for `policies/sms.yaml`: which phones may receive codes, and the abuse limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SmsPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ISO 3166-1 alpha-2 regions; empty means every region the Netherlands can reach.
    allowed_regions: list[str] = Field(default_factory=list)
    blocked_regions: list[str] = Field(default_factory=list)
    max_accounts_per_number: int = Field(default=3, ge=1)
    #: Code lifetime in seconds; never more than 10 minutes (issue 3, NIST SP 800-63B 5.1.3).
    code_ttl_seconds: int = Field(default=300, ge=60, le=600)
