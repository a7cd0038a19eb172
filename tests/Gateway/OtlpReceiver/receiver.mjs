// An OTLP/HTTP trace receiver for tests: POST /v1/traces with an ExportTraceServiceRequest (protobuf), decoded by
// the OpenTelemetry JS project's code generated from the official opentelemetry-proto definitions. Prints
// "listening PORT", then one JSON line per span received.
import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const root = require("@opentelemetry/otlp-transformer/build/src/generated/root.js");
const { ExportTraceServiceRequest, ExportTraceServiceResponse } = root.opentelemetry.proto.collector.trace.v1;

const hex = (bytes) => Buffer.from(bytes ?? []).toString("hex");
const value = (v) => v?.stringValue ?? (v?.intValue !== undefined && v?.intValue !== null ? Number(v.intValue) : v?.boolValue ?? v?.doubleValue ?? null);

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (c) => chunks.push(c));
  request.on("end", () => {
    if (request.method !== "POST" || request.url !== "/v1/traces" || request.headers["content-type"] !== "application/x-protobuf") {
      process.stdout.write(JSON.stringify({ unexpected: `${request.method} ${request.url} ${request.headers["content-type"]}` }) + "\n");
      response.writeHead(400).end();
      return;
    }
    const decoded = ExportTraceServiceRequest.decode(Buffer.concat(chunks));
    for (const rs of decoded.resourceSpans ?? []) {
      const resource = Object.fromEntries((rs.resource?.attributes ?? []).map((a) => [a.key, value(a.value)]));
      for (const ss of rs.scopeSpans ?? []) {
        for (const span of ss.spans ?? []) {
          process.stdout.write(JSON.stringify({
            traceId: hex(span.traceId),
            spanId: hex(span.spanId),
            parentSpanId: hex(span.parentSpanId),
            name: span.name,
            kind: span.kind,
            scope: ss.scope?.name,
            status: span.status?.code ?? 0,
            service: resource["service.name"],
            resource,
            attributes: Object.fromEntries((span.attributes ?? []).map((a) => [a.key, value(a.value)])),
          }) + "\n");
        }
      }
    }
    response.writeHead(200, { "content-type": "application/x-protobuf" }).end(Buffer.from(ExportTraceServiceResponse.encode({}).finish()));
  });
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`listening ${server.address().port}\n`));
