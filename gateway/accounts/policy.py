"""Policy model for `policies/accounts.yaml`: passwords, usernames, lockout and sessions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Argon2Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1 is the minimum advised.
    time_cost: int = Field(default=2, ge=1, le=10)
    memory_cost_kib: int = Field(default=19456, ge=7168, le=1048576)
    parallelism: int = Field(default=1, ge=1, le=8)


class PasswordPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # NIST SP 800-63B 5.1.1.2: at least 8 characters, allow at least 64, no composition rules.
    min_length: int = Field(default=8, ge=8, le=64)
    max_length: int = Field(default=128, ge=64, le=1024)
    argon2: Argon2Params = Argon2Params()


class UsernamePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_length: int = Field(default=6, ge=3, le=32)
    max_length: int = Field(default=32, ge=6, le=64)


class LockoutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # NIST SP 800-63B 5.2.2: no more than 100 consecutive failures; we block far earlier.
    max_failures: int = Field(default=5, ge=3, le=100)
    block_minutes: int = Field(default=30, ge=1, le=24 * 60)
    per_ip_per_hour: int = Field(default=100, ge=10)


class SessionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # DigiD ends a session after 15 minutes without activity.
    idle_minutes: int = Field(default=15, ge=1, le=60)
    absolute_hours: int = Field(default=12, ge=1, le=24)


class StaffPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_minutes: int = Field(default=15, ge=1, le=60)
    max_failures: int = Field(default=5, ge=3, le=20)
    block_minutes: int = Field(default=30, ge=1, le=24 * 60)


class AccountsPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    password: PasswordPolicy = PasswordPolicy()
    username: UsernamePolicy = UsernamePolicy()
    lockout: LockoutPolicy = LockoutPolicy()
    session: SessionPolicy = SessionPolicy()
    staff: StaffPolicy = StaffPolicy()
    #: Accounts unused this long expire (issue 5: three years).
    expire_unused_days: int = Field(default=3 * 365, ge=30)
