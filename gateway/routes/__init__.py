"""Identity routes that live outside the login flow's own pages (ARCHITECTURE.md, "routes").

Each sub-package is one `gateway.flows.routes.IdentityRoute` registered under the entry-point
group `gateway.routes`: `eidas` (the gateway as a SAML service provider toward an eIDAS node).
The account route (`desk_account`) stays in `gateway.flows.routes`, next to the flow it uses.
"""
