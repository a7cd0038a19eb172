using System.Diagnostics;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Weft.Gateway;

/// <summary>Where the gateway's spans go: an OTLP/HTTP (protobuf) collector, and how much may wait for it.</summary>
/// <param name="Endpoint">The collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT: <c>http://collector:4318</c>); spans are POSTed to its /v1/traces.</param>
internal sealed record GatewayTracingOptions(Uri Endpoint)
{
    /// <summary>Spans waiting for export at most; one more is dropped (counted), never waited for.</summary>
    public int MaxQueuedSpans { get; init; } = 2048;

    /// <summary>How often the queue is sent (and at most how many spans per request to the collector).</summary>
    public TimeSpan ExportInterval { get; init; } = TimeSpan.FromSeconds(1);

    public int MaxSpansPerExport { get; init; } = 512;

    /// <summary>How long one export may take; a collector that does not answer costs the export thread this, never a request.</summary>
    public TimeSpan ExportTimeout { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// One OpenTelemetry server span per request, exported over OTLP by the OpenTelemetry .NET SDK. The span's trace and
/// span ids are the ones in the <c>traceparent</c> the backend receives: a valid incoming traceparent is the span's
/// (remote) parent, else the span starts a trace.
/// <code>
///   request ─► span (Server, parent = incoming traceparent) ─► traceparent to the backend = 00-trace-span-flags
///   response ─► attributes (HTTP semantic conventions, the route), status ─► end ─► bounded queue ─► batch ─► OTLP/HTTP
/// </code>
/// A request only ever enqueues its span: a full queue drops it (<c>weft_gateway_spans_dropped_total{reason="queue_full"}</c>),
/// a failed export loses its batch (<c>reason="export_failed"</c>); neither waits, so a dead collector costs clients nothing.
/// </summary>
internal sealed partial class GatewayTracing : IDisposable
{
    public const string SourceName = "Weft.Gateway";

    private static readonly ActivitySource Source = new(SourceName);
    private readonly TracerProvider _provider;

    private GatewayTracing(TracerProvider provider) => _provider = provider;

    /// <summary>Starts the exporter; spans are made only while one is running.</summary>
    public static GatewayTracing Start(GatewayTracingOptions options, GatewayMetrics metrics)
    {
        var admission = new Admission(options, metrics);
        var exporter = new CountingExporter(new OtlpExporterOptions
        {
            Endpoint = new Uri(options.Endpoint, options.Endpoint.AbsolutePath.TrimEnd('/') + "/v1/traces"),
            Protocol = OtlpExportProtocol.HttpProtobuf,
            TimeoutMilliseconds = (int)options.ExportTimeout.TotalMilliseconds,
        }, admission);
        var provider = Sdk.CreateTracerProviderBuilder()
            .AddSource(SourceName)
            .SetResourceBuilder(ResourceBuilder.CreateEmpty().AddService("weft-gateway"))
            .SetSampler(new ParentBasedSampler(new AlwaysOnSampler()))
            .AddProcessor(admission)
            .AddProcessor(new BatchActivityExportProcessor(exporter, options.MaxQueuedSpans, (int)options.ExportInterval.TotalMilliseconds,
                (int)options.ExportTimeout.TotalMilliseconds, options.MaxSpansPerExport))
            .Build();
        Log.Info("gateway", $"exporting spans over OTLP/HTTP to {options.Endpoint}");
        return new GatewayTracing(provider);
    }

    /// <summary>The request's server span, child of a valid incoming traceparent; null when the parent says not sampled.</summary>
    public static Activity? StartSpan(HttpRequest request)
    {
        // Whatever the host made current (none is listened to) must not become the span's parent.
        Activity.Current = null;
        var match = ValidTraceParent().Match(request.Headers.TraceParent.ToString());
        ActivityContext parent = default;
        if (match.Success && ActivityContext.TryParse(match.Value, request.Headers.TraceState.ToString(), isRemote: true, out var incoming)
            && incoming.TraceId != default && incoming.SpanId != default)
        {
            parent = incoming;
        }

        var span = Source.StartActivity(ActivityKind.Server, parent, name: request.Method);
        if (span is { IsAllDataRequested: true })
        {
            span.SetTag("http.request.method", request.Method);
            span.SetTag("url.scheme", request.Scheme);
            span.SetTag("url.path", request.Path.Value);
            span.SetTag("server.address", request.Host.Host);
            if (request.Host.Port is { } port)
            {
                span.SetTag("server.port", port);
            }

            span.SetTag("network.protocol.version", request.Protocol switch { "HTTP/2" => "2", "HTTP/1.0" => "1.0", "HTTP/3" => "3", _ => "1.1" });
            span.SetTag("client.address", request.HttpContext.Connection.RemoteIpAddress?.ToString());
            if (request.Headers.UserAgent.ToString() is { Length: > 0 } agent)
            {
                span.SetTag("user_agent.original", agent);
            }
        }

        return span;
    }

    /// <summary>The traceparent the backend receives: the span's ids, so the trace continues through it.</summary>
    public static string TraceParent(Activity span) =>
        $"00-{span.TraceId.ToHexString()}-{span.SpanId.ToHexString()}-{((span.ActivityTraceFlags & ActivityTraceFlags.Recorded) != 0 ? "01" : "00")}";

    /// <summary>Ends the span with what the request came to: the route, the backend, the status.</summary>
    public static void End(Activity span, Route? route, Backend? backend, string? upstream, int statusCode, string responseFlags)
    {
        if (span.IsAllDataRequested)
        {
            if (route is not null)
            {
                span.DisplayName = $"{span.GetTagItem("http.request.method")} {route.Path.Value}";
                span.SetTag("http.route", route.Path.Value);
                span.SetTag("weft.route", route.Source);
            }

            span.SetTag("http.response.status_code", statusCode);
            span.SetTag("weft.response_flags", responseFlags);
            if (backend is not null)
            {
                span.SetTag("weft.service", backend.Name);
            }

            if (upstream is not null)
            {
                span.SetTag("weft.upstream", upstream);
            }

            // Semantic conventions: a server span is an error for 5xx only (4xx is the client's).
            if (statusCode >= 500)
            {
                span.SetTag("error.type", statusCode.ToString(System.Globalization.CultureInfo.InvariantCulture));
                span.SetStatus(ActivityStatusCode.Error);
            }
        }

        span.Stop();
    }

    public void Dispose()
    {
        // Sends what is queued, within the export timeout.
        _provider.Dispose();
    }

    [GeneratedRegex("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    private static partial Regex ValidTraceParent();

    /// <summary>
    /// Admission to the SDK's batch processor (added after this one): a span is admitted while fewer than
    /// <see cref="GatewayTracingOptions.MaxQueuedSpans"/> wait, else it is marked not recorded (so the batch
    /// processor skips it) and counted as dropped. Admitted spans leave the count when the exporter takes them,
    /// so the batch processor's own queue (as large) never fills and every drop is counted here.
    /// </summary>
    private sealed class Admission(GatewayTracingOptions options, GatewayMetrics metrics) : BaseProcessor<Activity>
    {
        private int _queued;

        public GatewayMetrics Metrics => metrics;

        public override void OnEnd(Activity data)
        {
            if (!data.Recorded)
            {
                return; // the batch processor skips it too
            }

            if (Interlocked.Increment(ref _queued) > options.MaxQueuedSpans)
            {
                Interlocked.Decrement(ref _queued);
                data.ActivityTraceFlags &= ~ActivityTraceFlags.Recorded;
                metrics.SpansDropped("queue_full", 1);
            }
        }

        public void Taken(int count) => Interlocked.Add(ref _queued, -count);
    }

    /// <summary>The SDK's OTLP exporter, counting what it sent and what it lost; the provider gives it the resource.</summary>
    private sealed class CountingExporter(OtlpExporterOptions options, Admission admission) : OtlpTraceExporter(options)
    {
        public override ExportResult Export(in Batch<Activity> batch)
        {
            var count = (int)batch.Count;
            admission.Taken(count);
            ExportResult result;
            try
            {
                result = base.Export(batch);
            }
            catch (Exception e)
            {
                Log.Debug("gateway", $"span export failed: {e.Message}");
                result = ExportResult.Failure;
            }

            if (result == ExportResult.Success)
            {
                admission.Metrics.SpansExported(count);
            }
            else
            {
                admission.Metrics.SpansDropped("export_failed", count);
            }

            return result;
        }
    }
}
