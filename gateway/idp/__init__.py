"""Relying-party protocols: the front doors relying parties knock on (ARCHITECTURE.md, `idp/`).

Each protocol turns its request into a `gateway.flows.types.RpRequest` and turns the login
flow's `AuthnResult` back into its own answer; protocols never import identity routes.
"""
