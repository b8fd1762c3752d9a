"""What a one-time code is for.

A code is bound to its purpose (issue 3, item 2): a code sent to log in can never confirm a
phone change, even within the same flow. The purpose also picks the sentence in the message
that tells the citizen what the code is for (`gateway.sms.messages`), so a person who did not
ask to change their phone number can tell that something is wrong.
"""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    #: Second factor when logging in.
    LOGIN = "login"
    #: Activating a new account with the letter/desk activation code.
    ACTIVATION = "activation"
    #: Confirming the phone number while applying at a desk (the desk code).
    APPLICATION = "application"
    #: Lifting a block after too many failed attempts.
    UNBLOCK = "unblock"
    #: Regaining access after a lost password.
    RECOVERY = "recovery"
    #: Proving possession of a new phone number before it replaces the old one.
    PHONE_CHANGE = "phone_change"
    #: Operators' test message (`gateway sms test`); never accepted by any flow.
    TEST = "test"
