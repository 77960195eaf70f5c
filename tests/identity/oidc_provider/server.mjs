// A local OpenID Connect provider for the identity tests: oidc-provider with one client and
// test accounts. Interactions sign in automatically as the account named by login_hint, so a
// test can drive the authorization-code flow without a browser.
// usage: node server.mjs PORT REDIRECT_URI
import Provider from 'oidc-provider';

const [port, redirectUri] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const accounts = {
  alice: { preferred_username: 'alice', name: 'Alice Admin', email: 'alice@example.org',
           groups: ['appliance-admins', 'ml-devs'] },
  bob: { preferred_username: 'bob', name: 'Bob Builder', email: 'bob@example.org',
         groups: ['ml-devs'] },
  carol: { preferred_username: 'carol', name: 'Carol', email: 'carol@example.org',
           groups: ['somewhere-else'] },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'appliance',
    client_secret: 'appliance-client-secret',
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true, methods: ['S256'] },
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'], email: ['email'],
            groups: ['groups'] },
  scopes: ['openid', 'profile', 'email', 'groups'],
  conformIdTokenClaims: false,  // put the profile claims into the ID token itself
  features: { devInteractions: { enabled: false } },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  cookies: { keys: ['test-cookie-key'] },
});

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/interaction/')) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const accountId = details.params.login_hint || 'alice';
    const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(ctx.req, ctx.res,
      { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
    return;
  }
  await next();
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
