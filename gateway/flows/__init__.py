"""The login flow between relying-party protocols and identity routes (issue 5).

Protocol modules use `start_login(rp_request)` and `finish(flow_id)` from
`gateway.flows.login`, with the neutral types in `gateway.flows.types`.
"""
