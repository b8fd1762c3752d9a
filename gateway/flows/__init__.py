"""The login flow between relying-party protocols and identity routes (issues 5 and 8).

Protocol modules use `start_login(rp_request)` and `finish(flow_id)` from
`gateway.flows.login`, with the neutral types in `gateway.flows.types`. Identity routes are
plugins (`gateway.flows.routes`: entry points `gateway.routes`, enabled in
policies/routes.yaml); an external route ends a flow with `complete_external` or
`fail_external`.
"""
