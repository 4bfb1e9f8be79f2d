// A hospital's setting in miniature, for the OAuth and TLS tests: a private certificate authority (made with openssl
// at test time), an OAuth authorization server of our own (client credentials with client_secret_basic or
// private_key_jwt, short-lived tokens) and an HTTPS front for an MCP server that demands mutual TLS and a valid
// bearer token (RFC 9728 metadata, a 401 with WWW-Authenticate otherwise) and passes the request on to it. Both listen
// on 127.0.0.1 on ports of their own, so they are two origins. Everything they issue and see is counted.
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey, createVerify, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import { join } from 'node:path';

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA, a server certificate for 127.0.0.1, a client certificate, an EC P-256 key for private_key_jwt and a
 *  client secret; files readable by the postgres user (the worker reads them), keys mode 0600. */
export function makePki(pgUid) {
  const dir = mkdtempSync(join(os.tmpdir(), 'pgdiag-pki-'));
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=pg_diagnosis test hospital CA'], dir);
  const issue = (name, ext) => {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`,
      '-subj', `/CN=${name}`], dir);
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`], dir);
  };
  issue('server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  issue('client', 'extendedKeyUsage=clientAuth\n');
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'jwt.key'], dir);
  const secret = `s3cret-${randomBytes(12).toString('hex')}`;
  writeFileSync(join(dir, 'secret'), `${secret}\n`);
  for (const f of ['client.key', 'jwt.key', 'secret']) chmodSync(join(dir, f), 0o600);
  chmodSync(dir, 0o755);
  for (const f of ['', 'ca.pem', 'client.pem', 'client.key', 'jwt.key', 'secret']) chownSync(join(dir, f), pgUid, pgUid);
  const file = (f) => join(dir, f);
  return {
    dir, file, secret,
    jwtKeyPem: readFileSync(file('jwt.key'), 'utf8'),
    ca: readFileSync(file('ca.pem')), cert: readFileSync(file('server.pem')), key: readFileSync(file('server.key')),
    destroy: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

function body(req) {
  return new Promise((resolve) => {
    let text = '';
    req.on('data', (c) => { text += c; });
    req.on('end', () => resolve(text));
  });
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** Verifies an ES256 client assertion (RFC 7523) with the client's public key. */
function verifyAssertion(jwt, publicKey, audience, clientId) {
  const [h, p, s] = String(jwt).split('.');
  if (!s) return 'malformed';
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  if (header.alg !== 'ES256') return `alg ${header.alg}`;
  const ok = createVerify('SHA256').update(`${h}.${p}`)
    .verify({ key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
  if (!ok) return 'bad signature';
  if (claims.iss !== clientId || claims.sub !== clientId) return 'iss/sub';
  if (claims.aud !== audience) return `aud ${claims.aud}`;
  if (!(claims.exp > Date.now() / 1000)) return 'expired';
  return null;
}

/**
 * The authorization server: client credentials only, client_secret_basic and private_key_jwt, tokens that live
 * `lifetimeS` seconds. `tokens` maps each issued token to its expiry and audience (resource).
 */
export async function startAuthServer(pki, { clientId, lifetimeS = 3 }) {
  const publicKey = createPublicKey(pki.jwtKeyPem);
  const stats = { issued: 0, basic: 0, jwt: 0, refused: 0, code: 0, refresh: 0, requests: [] };
  const tokens = new Map();
  const codes = new Map(); // code -> { challenge, redirect }
  const refreshTokens = new Set(); // live ones: each is good once (rotation)
  let issuer = '';
  const server = https.createServer({ key: pki.key, cert: pki.cert }, async (req, res) => {
    const json = (status, obj) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    stats.requests.push(`${req.method} ${req.url}`);
    if (req.method === 'GET' && req.url === '/.well-known/oauth-authorization-server')
      return json(200, {
        issuer, token_endpoint: `${issuer}/token`, authorization_endpoint: `${issuer}/authorize`,
        grant_types_supported: ['client_credentials', 'authorization_code', 'refresh_token'],
        token_endpoint_auth_methods_supported: ['client_secret_basic', 'private_key_jwt', 'none'],
        token_endpoint_auth_signing_alg_values_supported: ['ES256'], code_challenge_methods_supported: ['S256'],
        scopes_supported: ['mcp', 'offline_access'], authorization_response_iss_parameter_supported: true,
      });
    const issue = (resource, withRefresh) => {
      stats.issued++;
      const token = `at-${b64url(randomBytes(18))}`;
      tokens.set(token, { expires: Date.now() + lifetimeS * 1000, resource });
      const answer = { access_token: token, token_type: 'Bearer', expires_in: lifetimeS };
      if (withRefresh) {
        answer.refresh_token = `rt-${b64url(randomBytes(18))}`;
        refreshTokens.add(answer.refresh_token);
        tokens.set(answer.refresh_token, { expires: 0, resource: null }); // listed so the secrets grep sees it
      }
      return json(200, answer);
    };
    if (req.method === 'GET' && req.url.startsWith('/authorize?')) {
      // A headless login: the "person" approves at once (the test drives mcp_check --login --oauth-headless).
      const q = new URL(req.url, issuer).searchParams;
      if (q.get('client_id') !== clientId || q.get('code_challenge_method') !== 'S256') return json(400, { error: 'invalid_request' });
      const code = b64url(randomBytes(12));
      codes.set(code, { challenge: q.get('code_challenge'), redirect: q.get('redirect_uri'), resource: q.get('resource') });
      const to = new URL(q.get('redirect_uri'));
      to.searchParams.set('code', code);
      to.searchParams.set('state', q.get('state'));
      to.searchParams.set('iss', issuer);
      res.writeHead(302, { location: to.toString() });
      return res.end();
    }
    if (req.method !== 'POST' || req.url !== '/token') return json(404, { error: 'not_found' });
    const form = new URLSearchParams(await body(req));
    if (form.get('grant_type') === 'authorization_code') {
      const c = codes.get(form.get('code'));
      codes.delete(form.get('code'));
      const verifier = form.get('code_verifier') ?? '';
      if (!c || form.get('client_id') !== clientId || c.redirect !== form.get('redirect_uri') ||
          createHash('sha256').update(verifier).digest('base64url') !== c.challenge) {
        stats.refused++;
        return json(400, { error: 'invalid_grant' });
      }
      stats.code++;
      return issue(form.get('resource'), true);
    }
    if (form.get('grant_type') === 'refresh_token') {
      const rt = form.get('refresh_token');
      if (!refreshTokens.delete(rt) || form.get('client_id') !== clientId) {
        stats.refused++;
        return json(400, { error: 'invalid_grant' });
      }
      stats.refresh++;
      return issue(form.get('resource'), true); // rotated: the old refresh token is spent
    }
    if (form.get('grant_type') !== 'client_credentials') return json(400, { error: 'unsupported_grant_type' });
    let method = null;
    const auth = req.headers.authorization ?? '';
    if (auth.startsWith('Basic ')) {
      const [id, secret] = Buffer.from(auth.slice(6), 'base64').toString().split(':').map(decodeURIComponent);
      if (id === clientId && secret === pki.secret) method = 'basic';
    } else if (form.get('client_assertion_type') === 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
      if (verifyAssertion(form.get('client_assertion'), publicKey, issuer, clientId) === null) method = 'jwt';
    }
    if (!method) {
      stats.refused++;
      return json(401, { error: 'invalid_client' });
    }
    stats[method]++;
    return issue(form.get('resource'), false);
  });
  const port = await listen(server);
  issuer = `https://127.0.0.1:${port}`;
  return {
    issuer, stats, tokens,
    stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}

/**
 * The protected MCP endpoint: HTTPS with mutual TLS (clients without a certificate of the CA are refused at the
 * handshake), RFC 9728 metadata, and a token of `auth` for this resource on every MCP request; requests that pass
 * go on to `upstream` (the reference server). `stats.used` counts the distinct tokens that were accepted.
 */
export async function startProtectedMcp(pki, auth, upstream) {
  const stats = { unauthorized: 0, forwarded: 0, used: new Set(), peers: new Set() };
  const target = new URL(upstream);
  let base = '';
  const server = https.createServer({ key: pki.key, cert: pki.cert, ca: pki.ca, requestCert: true, rejectUnauthorized: true },
    (req, res) => {
      stats.peers.add(req.socket.getPeerCertificate()?.subject?.CN);
      if (req.method === 'GET' && req.url === '/.well-known/oauth-protected-resource/mcp') {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ resource: `${base}/mcp`, authorization_servers: [auth.issuer] }));
      }
      const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
      const known = auth.tokens.get(token);
      if (!known || known.expires <= Date.now() || known.resource !== `${base}/mcp`) {
        stats.unauthorized++;
        res.writeHead(401, {
          'content-type': 'application/json',
          'www-authenticate': `Bearer error="invalid_token", resource_metadata="${base}/.well-known/oauth-protected-resource/mcp"`,
        });
        return res.end('{"error":"invalid_token"}');
      }
      stats.used.add(token);
      stats.forwarded++;
      const headers = { ...req.headers, host: target.host };
      delete headers.authorization; // the upstream takes no token: it must not see ours either
      const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on('error', () => { if (!res.headersSent) res.writeHead(502); res.end(); });
      res.on('close', () => up.destroy());
      req.pipe(up);
    });
  const port = await listen(server);
  base = `https://127.0.0.1:${port}`;
  return {
    url: `${base}/mcp`, stats,
    stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
}
