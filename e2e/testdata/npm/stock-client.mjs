// A stock MCP client (the official TypeScript SDK's), with no credentials
// of its own, as the end-to-end tests run it through caddy mastio connect:
//
//   node stock-client.mjs stdio <command> <args...>
//   node stock-client.mjs http <url>
//
// It lists the tools, calls $TOOL with {"city": "Lima"} and $DENIED with
// {}, and prints {"tools": [...], "text": "...", "denied": "<error>"}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mode, ...rest] = process.argv.slice(2);
const transport =
  mode === "stdio"
    ? new StdioClientTransport({ command: rest[0], args: rest.slice(1), stderr: "inherit" })
    : new StreamableHTTPClientTransport(new URL(rest[0]));
const client = new Client({ name: "ts-stock-client", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const call = await client.callTool({ name: process.env.TOOL, arguments: { city: "Lima" } });
let denied = "";
try {
  await client.callTool({ name: process.env.DENIED, arguments: {} });
} catch (e) {
  denied = String(e.message);
}
console.log(JSON.stringify({ tools: tools.tools.map((t) => t.name), text: call.content?.[0]?.text ?? "", denied }));
await client.close();
