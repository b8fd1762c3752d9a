// The reference OpenID Provider for bench/oidc_compare.py: node `oidc-provider` (the certified
// Node.js provider) configured like the gateway's OIDC side, so the two are measured doing the
// same work:
//
// - one confidential client, client_secret_basic, authorization code only, PKCE (S256)
//   required, RS256 ID tokens with an RSA-2048 key, a refresh token issued at every code
//   exchange (the gateway always issues one), codes valid 60 s, access tokens 5 minutes;
// - state (sessions, grants, codes, tokens) in PostgreSQL through the small adapter below, so
//   that every worker of the cluster sees it (the built-in memory adapter is per process and an
//   LRU of 1000 entries: it can hold neither a shared session nor the pre-minted codes);
// - interactions are answered at once for the one bench account (login is not measured):
//   GET /interaction/<uid> finishes login, then consent, and the browser goes back to /auth;
// - POST /bench/mint?n=N mints N authorization codes for the caller's session through the
//   provider's own AuthorizationCode model, exactly as its authorization endpoint does, and
//   returns [[code, code_verifier], ...].
//
// Bench only: it listens on loopback, and /bench/mint would hand codes to anyone who asks.
//
// Usage: node provider.js --port 9100 --workers 2 --db postgresql://postgres@127.0.0.1:5432/x
// Prints "ready <port>" once every worker listens.

import cluster from 'node:cluster';
import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

import pg from 'pg';
import Provider from 'oidc-provider';

const CLIENT_ID = 'bench';
const REDIRECT_URI = 'https://rp.bench.example/cb';
const ACCOUNT_ID = 'bench-account';
const TABLE = 'ref_oidc_payloads';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '9100' },
    workers: { type: 'string', default: '2' },
    db: { type: 'string' },
    secret: { type: 'string', default: 'bench-client-secret' },
    'pool-size': { type: 'string', default: '10' },
  },
});
if (!args.db) {
  console.error('--db is required');
  process.exit(2);
}
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;

async function createTable() {
  const client = new pg.Client({ connectionString: args.db });
  await client.connect();
  await client.query(`
    CREATE TABLE IF NOT EXISTS ${TABLE} (
      id text NOT NULL,
      type text NOT NULL,
      payload jsonb NOT NULL,
      grant_id text,
      user_code text,
      uid text,
      expires_at timestamptz,
      consumed_at timestamptz,
      PRIMARY KEY (id, type)
    );
    CREATE INDEX IF NOT EXISTS ${TABLE}_grant_id ON ${TABLE} (grant_id);
    CREATE INDEX IF NOT EXISTS ${TABLE}_uid ON ${TABLE} (uid);
    CREATE INDEX IF NOT EXISTS ${TABLE}_user_code ON ${TABLE} (user_code);
  `);
  await client.end();
}

if (cluster.isPrimary) {
  await createTable();
  // One signing key and one set of cookie keys for every worker.
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'bench-rs256' };
  const shared = JSON.stringify({ jwk, cookieKey: crypto.randomBytes(32).toString('base64url') });
  const workers = Number(args.workers);
  let listening = 0;
  for (let i = 0; i < workers; i += 1) {
    const worker = cluster.fork({ BENCH_SHARED: shared });
    worker.on('listening', () => {
      listening += 1;
      if (listening === workers) console.log(`ready ${port}`);
    });
  }
  cluster.on('exit', (worker, code) => {
    console.error(`worker ${worker.process.pid} exited (${code})`);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { jwk, cookieKey } = JSON.parse(process.env.BENCH_SHARED);
  const pool = new pg.Pool({ connectionString: args.db, max: Number(args['pool-size']) });

  // oidc-provider's adapter interface (lib/adapters/memory_adapter.js is the reference).
  class PgAdapter {
    constructor(name) {
      this.type = name;
    }

    async upsert(id, payload, expiresIn) {
      const expiresAt = expiresIn ? new Date(Date.now() + expiresIn * 1000) : null;
      await pool.query(
        `INSERT INTO ${TABLE} (id, type, payload, grant_id, user_code, uid, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id, type) DO UPDATE SET payload = EXCLUDED.payload,
           grant_id = EXCLUDED.grant_id, user_code = EXCLUDED.user_code, uid = EXCLUDED.uid,
           expires_at = EXCLUDED.expires_at`,
        [id, this.type, payload, payload.grantId ?? null, payload.userCode ?? null,
          payload.uid ?? null, expiresAt],
      );
    }

    async #findBy(column, value) {
      const { rows } = await pool.query(
        `SELECT payload, consumed_at FROM ${TABLE}
         WHERE ${column} = $1 AND type = $2 AND (expires_at IS NULL OR expires_at > now())`,
        [value, this.type],
      );
      if (!rows.length) return undefined;
      const { payload, consumed_at: consumedAt } = rows[0];
      return consumedAt ? { ...payload, consumed: true } : payload;
    }

    find(id) { return this.#findBy('id', id); }

    findByUid(uid) { return this.#findBy('uid', uid); }

    findByUserCode(userCode) { return this.#findBy('user_code', userCode); }

    async consume(id) {
      await pool.query(
        `UPDATE ${TABLE} SET consumed_at = now() WHERE id = $1 AND type = $2`, [id, this.type],
      );
    }

    async destroy(id) {
      await pool.query(`DELETE FROM ${TABLE} WHERE id = $1 AND type = $2`, [id, this.type]);
    }

    async revokeByGrantId(grantId) {
      await pool.query(`DELETE FROM ${TABLE} WHERE grant_id = $1`, [grantId]);
    }
  }

  const provider = new Provider(issuer, {
    adapter: PgAdapter,
    clients: [{
      client_id: CLIENT_ID,
      client_secret: args.secret,
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [jwk] },
    cookies: { keys: [cookieKey] },
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 300,
      IdToken: 300,
      RefreshToken: 1800,
      Grant: 8 * 3600,
      Session: 8 * 3600,
      Interaction: 900,
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  const callback = provider.callback();

  function sessionCookie(req) {
    const cookies = req.headers.cookie ?? '';
    for (const part of cookies.split(';')) {
      const [name, ...rest] = part.trim().split('=');
      if (name === '_session') return rest.join('=');
    }
    return undefined;
  }

  // Login and consent for the bench account, without a page (login is not measured).
  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === 'login') {
      await provider.interactionFinished(
        req, res, { login: { accountId: ACCOUNT_ID } }, { mergeWithLastSubmission: false },
      );
      return;
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope('openid');
    const grantId = await grant.save();
    await provider.interactionFinished(
      req, res, { consent: { grantId } }, { mergeWithLastSubmission: true },
    );
  }

  // Codes as the authorization endpoint's codeHandler makes them (process_response_types.js).
  async function mint(req, res, n) {
    const session = await provider.Session.find(sessionCookie(req));
    const client = await provider.Client.find(CLIENT_ID);
    if (!session || !session.accountId || !session.grantIdFor(CLIENT_ID)) {
      res.writeHead(400).end('no session with a grant: log in first');
      return;
    }
    const out = [];
    const one = async () => {
      const verifier = crypto.randomBytes(32).toString('base64url');
      const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
      const code = new provider.AuthorizationCode({
        accountId: session.accountId,
        authTime: session.authTime(),
        client,
        codeChallenge: challenge,
        codeChallengeMethod: 'S256',
        grantId: session.grantIdFor(CLIENT_ID),
        nonce: crypto.randomBytes(16).toString('base64url'),
        redirectUri: REDIRECT_URI,
        scope: 'openid',
        sessionUid: session.uid,
        expiresWithSession: true,
      });
      out.push([await code.save(), verifier]);
    };
    for (let done = 0; done < n; done += 50) {
      await Promise.all(Array.from({ length: Math.min(50, n - done) }, one));
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(out));
  }

  http.createServer((req, res) => {
    const url = new URL(req.url, issuer);
    let handled;
    if (url.pathname.startsWith('/interaction/')) {
      handled = interaction(req, res);
    } else if (url.pathname === '/bench/mint' && req.method === 'POST') {
      handled = mint(req, res, Math.min(Number(url.searchParams.get('n')) || 0, 20000));
    } else {
      callback(req, res);
      return;
    }
    handled.catch((err) => {
      console.error(err);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  }).listen(port, '127.0.0.1');
}
