// An OAuth 2 authorization server for the end-to-end tests:
// oidc-provider (OpenID certified) on 127.0.0.1:$PORT, with two clients:
// "mastio" (client credentials grant, secret $MASTIO_SECRET), and
// "search-server" (secret $RS_SECRET), the upstream MCP server that
// introspects the tokens it is given (RFC 7662). Access tokens are opaque
// and bound to the resource indicator asked for (RFC 8707). Each token
// issued is printed as "TOKEN_ISSUED <resource> <scope>".
import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: "mastio",
      client_secret: process.env.MASTIO_SECRET,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_basic",
      scope: "tools",
    },
    {
      client_id: "search-server",
      client_secret: process.env.RS_SECRET,
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  scopes: ["tools"],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: "tools",
        audience: resource,
        accessTokenTTL: 3600,
        accessTokenFormat: "opaque",
      }),
    },
  },
});
provider.on("client_credentials.saved", (token) => {
  console.log(`TOKEN_ISSUED ${token.aud} ${token.scope}`);
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.listen(port, "127.0.0.1", () => console.log(`LISTENING ${port}`));
