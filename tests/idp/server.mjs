// A real OpenID Connect provider for the tests: panva's oidc-provider (OpenID Certified), configured for
// the authorization code flow with PKCE and JWT access tokens for one API audience.
//
//   node tests/idp/server.mjs CONFIG    CONFIG: a path to a JSON file, or the JSON itself
//   IDP_CONFIG='{...}' node tests/idp/server.mjs
//
// {
//   "port": 0,                              0: any free port; the issuer then follows the port bound
//   "issuer": "http://127.0.0.1:PORT",      optional; only with a fixed port
//   "client": {"client_id": "...", "client_secret": "..." (omit: public client), "redirect_uris": ["..."]},
//   "audience": "https://gateway.test/api", the access token's aud
//   "accounts": {"alice": ["admin"], "bob": []},
//   "consent": "auto" | "prompt",           default "auto": no consent page
//   "access_token_ttl": 3600                seconds, default 3600
// }
//
// Prints `READY <issuer>` on stdout once listening; exits 0 on SIGTERM or SIGINT.
//
// The sign-in pages are ours, not devInteractions', so that an unknown login is refused, consent can be
// granted without a page, and no page loads anything from outside the machine (devInteractions' pages
// import a web font). Their fields and labels are those of devInteractions: a form with `login` and
// `password` and a "Sign-in" button, then (consent "prompt") a form with a "Continue" button.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

function readConfig() {
  const raw = process.argv[2] ?? process.env.IDP_CONFIG;
  if (!raw) fail('give the JSON config as the first argument (a path or the JSON) or in IDP_CONFIG');
  let text = raw;
  if (!raw.trimStart().startsWith('{')) {
    try {
      text = readFileSync(raw, 'utf8');
    } catch (err) {
      fail(`cannot read config ${raw}: ${err.message}`);
    }
  }
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    fail(`config is not JSON: ${err.message}`);
  }
  const { client, audience, accounts } = cfg;
  if (!Number.isInteger(cfg.port ?? 0)) fail('port must be an integer');
  if (typeof client?.client_id !== 'string' || !client.client_id) fail('client.client_id is required');
  if (!Array.isArray(client.redirect_uris) || !client.redirect_uris.length) fail('client.redirect_uris is required');
  if (typeof audience !== 'string' || !audience) fail('audience is required');
  if (accounts === null || typeof accounts !== 'object' || Array.isArray(accounts)) {
    fail('accounts must be an object {login: [roles...]}');
  }
  for (const [login, roles] of Object.entries(accounts)) {
    if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) {
      fail(`accounts.${login} must be a list of role names`);
    }
  }
  if (!['auto', 'prompt', undefined].includes(cfg.consent)) fail('consent must be "auto" or "prompt"');
  if (cfg.issuer && !cfg.port) fail('an explicit issuer needs a fixed port');
  return cfg;
}

// A resource indicator must be an absolute URI (RFC 8707); an audience that is not one (e.g. "llm-gateway")
// is reached through a URN, and the token's aud is still the audience itself.
function resourceIndicatorFor(audience) {
  return URL.canParse(audience) ? audience : `urn:test-idp:audience:${encodeURIComponent(audience)}`;
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

function providerConfig(cfg) {
  const { client, audience, accounts } = cfg;
  const indicator = resourceIndicatorFor(audience);
  const known = (login) => Object.hasOwn(accounts, login);
  return {
    clients: [
      {
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: client.client_secret ? 'client_secret_basic' : 'none',
        ...client,
      },
    ],
    jwks: { keys: [signingKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    claims: { openid: ['sub'], profile: ['name', 'preferred_username'] },
    async findAccount(ctx, sub) {
      if (!known(sub)) return undefined;
      return { accountId: sub, claims: async () => ({ sub, name: sub, preferred_username: sub }) };
    },
    // The access token's roles; only known accounts get this far (see the login handler).
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'AccessToken') return undefined;
      return { roles: [...(accounts[token.accountId] ?? [])] };
    },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // Every authorization request is for the one API, without a `resource` parameter...
        defaultResource: async () => indicator,
        // ...and the code exchange issues the token for it, although openid is asked for too.
        useGrantedResource: async () => true,
        async getResourceServerInfo(ctx, resource) {
          if (resource !== indicator) throw new errors.InvalidTarget();
          return {
            scope: '',
            audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: cfg.access_token_ttl ?? 3600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      AccessToken: cfg.access_token_ttl ?? 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre>${escape(JSON.stringify(out, null, 2))}</pre>`);
    },
  };
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, loginHint) {
  return page('Sign-in', `<form autocomplete="off" action="/interaction/${uid}/login" method="post">
<input type="hidden" name="prompt" value="login">
<input required type="text" name="login" placeholder="login" value="${escape(loginHint ?? '')}">
<input required type="password" name="password" placeholder="password (any)">
<button type="submit">Sign-in</button>
</form>
<a href="/interaction/${uid}/abort">[ Cancel ]</a>`);
}

function consentPage(uid, clientId) {
  return page('Authorize', `<p>${escape(clientId)} asks to sign you in.</p>
<form autocomplete="off" action="/interaction/${uid}/confirm" method="post">
<input type="hidden" name="prompt" value="consent">
<button autofocus type="submit">Continue</button>
</form>
<a href="/interaction/${uid}/abort">[ Cancel ]</a>`);
}

async function formBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Grants what the consent prompt lists as missing (as devInteractions' consent does).
async function grantConsent(provider, { grantId, prompt: { details }, params, session }) {
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return { consent: { grantId: await grant.save() } };
}

function interactions(provider, cfg) {
  const route = /^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/;
  return async function interaction(ctx, next) {
    const match = route.exec(ctx.path);
    if (!match) return next();
    const [, uid, action] = match;
    ctx.set('cache-control', 'no-store');
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) throw new errors.InvalidRequest('interaction mismatch');
    const finish = async (result, merge = true) => {
      ctx.status = 303;
      ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge }));
    };
    const { name } = details.prompt;

    if (ctx.method === 'GET' && action === undefined) {
      if (name === 'login') {
        ctx.type = 'html';
        ctx.body = loginPage(uid, details.params.login_hint);
      } else if (name === 'consent' && (cfg.consent ?? 'auto') === 'auto') {
        await finish(await grantConsent(provider, details));
      } else if (name === 'consent') {
        ctx.type = 'html';
        ctx.body = consentPage(uid, details.params.client_id);
      } else {
        ctx.throw(501, `prompt ${name} is not implemented`);
      }
    } else if (ctx.method === 'POST' && action === 'login' && name === 'login') {
      const login = (await formBody(ctx.req)).get('login') ?? '';
      // Any password is accepted; a login not in `accounts` is refused: access_denied to the client.
      if (Object.hasOwn(cfg.accounts, login)) {
        await finish({ login: { accountId: login } }, false);
      } else {
        await finish({ error: 'access_denied', error_description: 'unknown account' }, false);
      }
    } else if (ctx.method === 'POST' && action === 'confirm' && name === 'consent') {
      await formBody(ctx.req);
      await finish(await grantConsent(provider, details));
    } else if (ctx.method === 'GET' && action === 'abort') {
      await finish({ error: 'access_denied', error_description: 'End-User aborted interaction' }, false);
    } else {
      ctx.throw(405, 'unexpected interaction request');
    }
  };
}

const cfg = readConfig();
const server = createServer();
server.listen(cfg.port ?? 0, '127.0.0.1', () => {
  const issuer = cfg.issuer ?? `http://127.0.0.1:${server.address().port}`;
  let provider;
  try {
    provider = new Provider(issuer, providerConfig(cfg));
  } catch (err) {
    fail(`bad provider configuration: ${err.message}`);
  }
  provider.use(interactions(provider, cfg));
  server.on('request', provider.callback());
  process.stdout.write(`READY ${issuer}\n`);
});
server.on('error', (err) => fail(err.message));

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
