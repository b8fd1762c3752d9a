"""SAML 2.0 identity provider (OASIS SAML 2.0 Core, Bindings and Metadata), built on pysaml2.

`crypto` gives pysaml2 an in-process XML Signature / XML Encryption backend.
"""
