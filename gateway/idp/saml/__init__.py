"""SAML 2.0 identity provider (OASIS SAML 2.0 Core, Bindings and Metadata), built on pysaml2.

`crypto` gives pysaml2 an in-process XML Signature / XML Encryption backend; `attributes` is
the one naming of every attribute released to an SP (neutral name -> URI Name, FriendlyName).
"""

from __future__ import annotations

import warnings

# pysaml2 names the CFB mode at import time (for ciphers we never use); cryptography warns
# about it on every start. Silence exactly that one warning, not cryptography's others.
warnings.filterwarnings(
    "ignore", message="CFB has been moved", module="saml2.cryptography.symmetric"
)
