// A relying party built on openid-client (OpenID Certified, not built on authlib), driven by
// tests/test_oidc_interop.py against the gateway on a loopback port.
//
// Usage: node rp.mjs authorize|callback|logout-token < input.json ; prints one JSON object.
//   authorize    {issuer, client_id, client_secret, redirect_uri, acr_values}
//                -> {url, verifier, state, nonce}  (PKCE S256, fresh state and nonce)
//   callback     {issuer, client_id, client_secret, callback_url, verifier, state, nonce,
//                 expected_acr}
//                -> {claims, userinfo, header}: the code exchanged, the ID token validated by the
//                   library (JWKS signature, iss, aud, exp, nonce, RFC 9207 iss) plus the acr
//   logout-token {issuer, client_id, logout_token}
//                -> {header, payload}: a back-channel logout token checked with jose (signature
//                   by the JWKS, iss, aud, typ) and the rules of Back-Channel Logout 1.0 2.6
// On any failure: {"error": NAME, "message": TEXT} and exit status 1.
import * as client from 'openid-client'
import * as jose from 'jose'

const EVENT = 'http://schemas.openid.net/event/backchannel-logout'

async function readInput () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function configure (input) {
  // The gateway runs on plain http://127.0.0.1 in tests: the only relaxation made.
  return client.discovery(
    new URL(input.issuer),
    input.client_id,
    undefined,
    client.ClientSecretBasic(input.client_secret),
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks] }
  )
}

async function authorize (input) {
  const config = await configure(input)
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const params = {
    redirect_uri: input.redirect_uri,
    scope: 'openid',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce
  }
  if (input.acr_values) params.acr_values = input.acr_values
  const url = client.buildAuthorizationUrl(config, params)
  return { url: url.href, verifier, state, nonce }
}

async function callback (input) {
  const config = await configure(input)
  const tokens = await client.authorizationCodeGrant(config, new URL(input.callback_url), {
    pkceCodeVerifier: input.verifier,
    expectedState: input.state,
    expectedNonce: input.nonce,
    idTokenExpected: true
  })
  const claims = tokens.claims()
  if (claims.acr !== input.expected_acr) {
    throw Object.assign(new Error(`acr is ${claims.acr}, expected ${input.expected_acr}`),
      { name: 'AcrMismatch' })
  }
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub)
  return { claims, userinfo, header: jose.decodeProtectedHeader(tokens.id_token) }
}

async function logoutToken (input) {
  const config = await configure(input)
  const meta = config.serverMetadata()
  const jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri))
  const { payload, protectedHeader } = await jose.jwtVerify(input.logout_token, jwks, {
    issuer: meta.issuer,
    audience: input.client_id,
    typ: 'logout+jwt',
    algorithms: ['RS256', 'ES256'],
    requiredClaims: ['iat', 'jti', 'events']
  })
  const events = payload.events
  if (typeof events !== 'object' || events === null || typeof events[EVENT] !== 'object') {
    throw Object.assign(new Error('no back-channel logout event'), { name: 'BadLogoutToken' })
  }
  if (payload.sub === undefined && payload.sid === undefined) {
    throw Object.assign(new Error('neither sub nor sid'), { name: 'BadLogoutToken' })
  }
  if ('nonce' in payload) {
    throw Object.assign(new Error('a logout token must not carry a nonce'),
      { name: 'BadLogoutToken' })
  }
  return { header: protectedHeader, payload }
}

const modes = { authorize, callback, 'logout-token': logoutToken }

try {
  const mode = modes[process.argv[2]]
  if (!mode) throw new Error(`unknown mode ${process.argv[2]}`)
  process.stdout.write(JSON.stringify(await mode(await readInput())) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({
    error: err.name || 'Error',
    code: err.code,
    message: String(err.message || err),
    cause: err.cause instanceof Error ? `${err.cause.code || ''} ${err.cause.message}` : undefined
  }) + '\n')
  process.exitCode = 1
}
