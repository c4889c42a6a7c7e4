// Starts the example backend. Settings, from the environment:
//   SHAREVAULT_URL               sharevault's private listener, e.g. http://127.0.0.1:7450
//   SHAREVAULT_TOKEN_FILE        a file holding a token of role backend
//                                (sharevault token create --name backend --role backend)
//   SHAREVAULT_EJECT_TOKEN_FILE  optional: a token of role eject, which turns eject on
//   BACKEND_USERS                JSON {"userId": "Portal clientId", ...}: this example's user
//                                table (yours is your database)
//   HOST, PORT                   where to listen (127.0.0.1, 3000; PORT=0 picks a free port)
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { createApp } from "./app.js";
import { Vault } from "./sharevault.js";

function setting(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    console.error(`${name} is required (see the top of src/server.ts)`);
    process.exit(2);
  }
  return value;
}

function token(file: string): string {
  return readFileSync(file, "utf8").trim();
}

const ejectFile = process.env["SHAREVAULT_EJECT_TOKEN_FILE"];
const vault = new Vault(
  setting("SHAREVAULT_URL"),
  token(setting("SHAREVAULT_TOKEN_FILE")),
  ejectFile ? token(ejectFile) : undefined,
);
const users = new Map(
  Object.entries(JSON.parse(process.env["BACKEND_USERS"] ?? "{}") as Record<string, string>),
);
const app = createApp({
  vault,
  clientIdOf: (userId) => users.get(userId),
  // Replace with your own second factor: Portal advises several before an eject.
  ejectAllowed: ejectFile ? () => true : undefined,
});
const server = app.listen(Number(process.env["PORT"] ?? 3000), process.env["HOST"] ?? "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  console.log(`backend listening on http://${address}:${port}`);
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
