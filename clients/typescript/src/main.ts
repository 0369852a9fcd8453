/**
 * Classifies a case with the ED triage service from Node.js, showing what every TypeScript
 * caller needs: the API key as a bearer token, a deadline on each call, retries (UNAVAILABLE
 * with backoff, RESOURCE_EXHAUSTED after the wait the server names in RetryInfo) and the
 * google.rpc details of a failed call. Connect-ES speaks gRPC over HTTP/2 here.
 *
 *   TRIAGE_TARGET=127.0.0.1:50051 TRIAGE_API_KEY=... npm start -- CASE_JSON [COUNT]
 *
 * The case is the proto JSON of a triage.v1.TriageCase. TRIAGE_TLS_CA=ca.pem switches to
 * TLS trusting that CA (default: plaintext, for a server on this machine).
 */
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { fromJson, toJson } from "@bufbuild/protobuf";
import type { JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client, Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { BadRequestSchema, QuotaFailureSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { TriageCaseSchema } from "../gen/triage/v1/case_pb.js";
import type { TriageCase } from "../gen/triage/v1/case_pb.js";
import { ClassificationSchema } from "../gen/triage/v1/classification_pb.js";
import type { Classification } from "../gen/triage/v1/classification_pb.js";
import { ClassifyService } from "../gen/triage/v1/classify_service_pb.js";

const DEADLINE_MS = 5_000;
// UNAVAILABLE (a replica restarting, the audit store briefly down) is retried with backoff,
// as the Python client's service config does: 4 attempts, 0.1 s doubling up to 2 s.
const MAX_ATTEMPTS = 4;
const MAX_RETRY_WAIT_MS = 2_000;

/** Sends the API key as `authorization: Bearer <key>` on every call. */
function bearer(key: string): Interceptor {
  return (next) => async (request) => {
    if (key) request.header.set("authorization", `Bearer ${key}`);
    return next(request);
  };
}

/** How long to wait before trying a failed call again, or undefined not to. */
function retryWaitMs(error: ConnectError, attempt: number): number | undefined {
  if (error.code === Code.Unavailable && attempt < MAX_ATTEMPTS) {
    return Math.min(100 * 2 ** (attempt - 1), 2_000) * (0.5 + Math.random() / 2);
  }
  // Only the server knows how long a rate limit lasts; a spent budget sends no RetryInfo.
  const [info] = error.findDetails(RetryInfoSchema);
  if (error.code === Code.ResourceExhausted && info?.retryDelay) {
    const ms = Number(info.retryDelay.seconds) * 1_000 + info.retryDelay.nanos / 1e6;
    return ms <= MAX_RETRY_WAIT_MS ? ms : undefined;
  }
  return undefined;
}

/** One Classify call under its own deadline, tried again as retryWaitMs says. */
async function classify(client: Client<typeof ClassifyService>, triageCase: TriageCase): Promise<Classification> {
  for (let attempt = 1; ; attempt++) {
    try {
      const response = await client.classify({ case: triageCase }, { timeoutMs: DEADLINE_MS });
      if (!response.classification) throw new ConnectError("no classification in the response", Code.Internal);
      return response.classification;
    } catch (thrown) {
      const error = ConnectError.from(thrown);
      const wait = retryWaitMs(error, attempt);
      if (wait === undefined) throw error;
      console.error(`${Code[error.code]}: retrying in ${(wait / 1_000).toFixed(2)} s`);
      await sleep(wait);
    }
  }
}

/** Prints a failed call's status and each google.rpc detail it carries. */
function report(error: ConnectError): void {
  console.error(`${Code[error.code]}: ${error.rawMessage}`);
  for (const request of error.findDetails(BadRequestSchema)) {
    for (const v of request.fieldViolations) console.error(`  field ${v.field}: ${v.description} (${v.reason})`);
  }
  for (const failure of error.findDetails(QuotaFailureSchema)) {
    for (const v of failure.violations) console.error(`  quota ${v.subject}: ${v.description}`);
  }
  for (const info of error.findDetails(RetryInfoSchema)) {
    console.error(`  retry after ${Number(info.retryDelay?.seconds ?? 0)} s`);
  }
  const requestId = error.metadata.get("x-request-id");
  if (requestId) console.error(`  request id ${requestId}`);
}

async function main(argv: string[]): Promise<number> {
  if (argv.length < 1 || argv.length > 2) {
    console.error("usage: npm start -- CASE_JSON [COUNT]");
    return 2;
  }
  const triageCase = fromJson(TriageCaseSchema, JSON.parse(argv[0]) as JsonValue);
  const count = argv.length > 1 ? Number(argv[1]) : 1;
  const target = process.env.TRIAGE_TARGET || "127.0.0.1:50051";
  const ca = process.env.TRIAGE_TLS_CA;
  const transport = createGrpcTransport({
    baseUrl: `${ca ? "https" : "http"}://${target}`,
    nodeOptions: ca ? { ca: readFileSync(ca) } : undefined,
    interceptors: [bearer(process.env.TRIAGE_API_KEY ?? "")],
  });
  const client = createClient(ClassifyService, transport);

  let failed = false;
  for (let i = 0; i < count; i++) {
    try {
      const c = toJson(ClassificationSchema, await classify(client, triageCase)) as Record<string, JsonValue>;
      console.log(`${c.esiLevel} ${c.classificationId} decided at ${c.decidedAt}: ${c.rationale}`);
    } catch (thrown) {
      report(ConnectError.from(thrown));
      failed = true;
    }
  }
  return failed ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
