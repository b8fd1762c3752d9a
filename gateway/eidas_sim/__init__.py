"""`gateway eidas-sim`: a simulated foreign eIDAS proxy service for demo and tests (issue 8).

- `node`: keys, signed metadata, AuthnRequest checks and signed, encrypted Responses
  (eIDAS SAML Message Format and Attribute Profile v1.2);
- `persons`: fictitious citizens of several member states at each level of assurance;
- `app`: the web app (metadata, the person-choice page, the POST back to the connector);
- `cli`: the `gateway eidas-sim` command.

Never imported by the gateway itself: only by its command line and the tests.
"""
