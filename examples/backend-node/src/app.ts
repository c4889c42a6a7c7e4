// The company's API that the app calls, as in Portal's guides (routes by the company's own
// `userId`), backed by sharevault (routes by Portal's `clientId`). Portal's webhook calls
// (POST /backup, /backup/fetch) do not come here: they go to sharevault's public listener.
import express, { type NextFunction, type Request, type Response } from "express";
import { Vault, VaultError } from "./sharevault.js";

/** Finds the Portal `clientId` of one of the company's users; `undefined` for no such user. */
export type ClientIdOf = (userId: string) => string | undefined | Promise<string | undefined>;

export interface Options {
  vault: Vault;
  clientIdOf: ClientIdOf;
  /**
   * Eject hands out the custodian share, from which the device rebuilds the private key:
   * Portal advises several factors of authentication before it. Off unless given.
   */
  ejectAllowed?: (req: Request) => boolean | Promise<boolean>;
}

const METHOD = /^[A-Za-z0-9_-]{1,64}$/;

class BadRequest extends Error {}

/** A body field that must be a non-empty string. */
function text(body: Record<string, unknown>, field: string): string {
  const value = body[field];
  if (typeof value !== "string" || value.length === 0) {
    throw new BadRequest(`${field}: a non-empty string is required`);
  }
  return value;
}

function method(value: unknown, field = "backupMethod"): string {
  if (typeof value !== "string" || !METHOD.test(value)) {
    throw new BadRequest(`${field}: 1-64 of A-Z a-z 0-9 _ - is required`);
  }
  return value;
}

/** Portal's React Native guide posts `{data: {backupMethod, cipherText}}` with axios. */
function body(req: Request): Record<string, unknown> {
  const raw = (req.body ?? {}) as Record<string, unknown>;
  const inner = raw["data"];
  return typeof inner === "object" && inner !== null ? (inner as Record<string, unknown>) : raw;
}

export function createApp({ vault, clientIdOf, ejectAllowed }: Options) {
  const app = express();
  app.disable("x-powered-by");
  app.use(express.json({ limit: "256kb" }));

  // Authenticate the user here (your session or token), then map them to their Portal client.
  async function clientId(req: Request): Promise<string | undefined> {
    return clientIdOf(String(req.params["userId"]));
  }

  // Backup: the app sends the cipherText that `portal.backupWallet(...)` returned, then, once
  // this answers 200, calls `portal.api.storedClientBackupShare(true, METHOD)`: that call, to
  // Portal, is what completes the backup in Portal's view. sharevault's own pair status follows
  // from the store below; nothing here notifies Portal.
  //
  //   SDK flow:     {backupMethod: "PASSWORD", cipherText}
  //   Enclave flow: {backupMethod: "PASSWORD", secp256k1Ciphertext, ed25519Ciphertext},
  //                 stored per curve (PASSWORD-SECP256K1, PASSWORD-ED25519)
  app.post("/users/:userId/user-backup-shares", async (req, res) => {
    const id = await clientId(req);
    if (id === undefined) return res.status(404).json({ error: "no such user" });
    const fields = body(req);
    const backupMethod = method(fields["backupMethod"]);
    const stored: { backupMethod: string; completedBackupSharePairIds: string[] }[] = [];
    if ("cipherText" in fields) {
      stored.push(await vault.storeCipherText(id, backupMethod, text(fields, "cipherText")));
    } else {
      for (const curve of ["SECP256K1", "ED25519"]) {
        const field = `${curve.toLowerCase()}Ciphertext`;
        if (field in fields) {
          const perCurve = method(`${backupMethod}-${curve}`);
          stored.push(await vault.storeCipherText(id, perCurve, text(fields, field)));
        }
      }
      if (stored.length === 0) throw new BadRequest("cipherText: a non-empty string is required");
    }
    res.status(200).json({
      message: "Successfully stored client backup share",
      completedBackupSharePairIds: stored.flatMap((s) => s.completedBackupSharePairIds),
    });
  });

  // Recovery: `?backupMethod=PASSWORD` (or PASSWORD-SECP256K1 for the Enclave flow), and
  // optionally `&backupSharePairId=` of the pair the device recovers: then only that backup's
  // cipherText is answered (see Vault.cipherText).
  app.get("/users/:userId/encrypted-user-backup-shares", async (req, res) => {
    const id = await clientId(req);
    if (id === undefined) return res.status(404).json({ error: "no such user" });
    const backupMethod = method(req.query["backupMethod"]);
    const pair = req.query["backupSharePairId"];
    if (pair !== undefined && typeof pair !== "string") {
      throw new BadRequest("backupSharePairId: one string");
    }
    const found = await vault.cipherText(id, backupMethod, pair);
    if (found === null) return res.status(404).json({ error: "no client backup share" });
    res.status(200).json({ cipherText: found.cipherText, backupMethod: found.backupMethod });
  });

  // Eject: the custodian share of `?backupMethod=PASSWORD-SECP256K1`, as `{orgShare}`.
  app.get("/users/:userId/custodian-backup-shares", async (req, res) => {
    if (ejectAllowed === undefined || !(await ejectAllowed(req))) {
      return res.status(403).json({ error: "eject is not allowed" });
    }
    const id = await clientId(req);
    if (id === undefined) return res.status(404).json({ error: "no such user" });
    const orgShare = await vault.custodianShare(id, method(req.query["backupMethod"]));
    if (orgShare === null) return res.status(404).json({ error: "no custodian backup share" });
    res.status(200).json({ orgShare });
  });

  // Errors: never the request body, a share or a cipherText in the answer or the log.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof BadRequest) return res.status(400).json({ error: err.message });
    if (err instanceof VaultError) {
      // 401/403: this backend's token is wrong (its operator's problem); 429 and 5xx: retry
      // later; any other 4xx: the request was wrong (sharevault's message names the field).
      const status =
        err.status >= 500 || err.status === 429
          ? 503
          : err.status === 401 || err.status === 403
            ? 500
            : err.status;
      console.error(`sharevault: ${err.status} ${err.body?.error.code ?? ""}`);
      return res.status(status).json({ error: err.body?.error.message ?? "vault unavailable" });
    }
    if (err instanceof SyntaxError) return res.status(400).json({ error: "body: not JSON" });
    console.error(`internal error: ${err instanceof Error ? err.name : typeof err}`);
    res.status(500).json({ error: "internal error" });
  });
  return app;
}
