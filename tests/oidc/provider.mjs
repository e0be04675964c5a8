// A real OpenID Connect provider for the single sign-on tests: node's oidc-provider (npm, a
// development dependency) on loopback, with one client (ours) and the users of a JSON file
// that the tests rewrite between sign-ins ({"login": {"email": ..., "groups": [...],
// "email_verified": true by default}}), read
// at every lookup. Its development sign-in form takes any password: the tests prove our side
// of the protocol, not the provider's passwords.
//
//   node tests/oidc/provider.mjs   (settings from the environment: see `env` below)
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

const issuer = env('OIDC_TEST_ISSUER');
const usersFile = env('OIDC_TEST_USERS');
const users = () => JSON.parse(readFileSync(usersFile, 'utf8'));

const provider = new Provider(issuer, {
  clients: [{
    client_id: env('OIDC_TEST_CLIENT_ID'),
    client_secret: env('OIDC_TEST_CLIENT_SECRET'),
    redirect_uris: [env('OIDC_TEST_REDIRECT_URI')],
    post_logout_redirect_uris: [env('OIDC_TEST_POST_LOGOUT_URI')],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  cookies: { keys: ['oidc-test-provider-cookie-key'] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  async findAccount(ctx, id) {
    const user = users()[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        const verified = user.email_verified ?? true;
        return { sub: id, email: user.email, email_verified: verified, groups: user.groups };
      },
    };
  },
  // Consent is given once for all: the client is the operator's own platform.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope('openid email groups');
    await grant.save();
    return grant;
  },
});

// An interaction login names a user the file does not have: refuse, as a real provider would.
provider.on('server_error', (ctx, error) => console.error('server_error', error));

http.createServer(provider.callback()).listen(Number(env('OIDC_TEST_PORT')), '127.0.0.1', () => {
  console.log(`oidc test provider at ${issuer}`);
});
