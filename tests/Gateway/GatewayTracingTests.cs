using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;
using Weft.Gateway;
using Weft.Tests.Daemonset;

namespace Weft.Tests.Gateway;

/// <summary>
/// OpenTelemetry spans over OTLP/HTTP: the gateway (the OpenTelemetry .NET SDK's exporter) against a real receiver,
/// a Node.js HTTP server that decodes each ExportTraceServiceRequest with the OpenTelemetry JS project's code
/// generated from the official opentelemetry-proto definitions (tests/Gateway/OtlpReceiver), and a collector that
/// is down or never answers.
/// </summary>
public class GatewayTracingTests
{
    private const string Routes = """
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: web, namespace: default}
        spec:
          ingressClassName: weft
          rules:
          - host: x.example
            http:
              paths:
              - {pathType: Prefix, path: /api, backend: {service: {name: web, port: {number: 80} } } }
              - {pathType: Prefix, path: /down, backend: {service: {name: nobody, port: {number: 80} } } }

        """;

    [Fact]
    public async Task EachRequest_IsOneServerSpanExportedOverOtlp_WhoseIdsAreTheTraceparentTheBackendReceived()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        await using var gateway = new GatewayLoopback();
        var backend = await gateway.BackendAsync("web");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", backend.Port) + Routes, new GatewayOptions
        {
            Tracing = new GatewayTracingOptions(receiver.Endpoint) { ExportInterval = TimeSpan.FromMilliseconds(100) },
        });

        var started = (await gateway.EchoAsync("x.example", "/api/items", r => r.Headers.UserAgent.ParseAdd("tracing-test/1"))).Headers["traceparent"];
        const string incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        var continued = (await gateway.EchoAsync("x.example", "/api", r => r.Headers.Add("traceparent", incoming))).Headers["traceparent"];
        Assert.Equal(HttpStatusCode.ServiceUnavailable, await gateway.StatusAsync("x.example", "/down"));
        Assert.Equal(HttpStatusCode.NotFound, await gateway.StatusAsync("y.example", "/"));

        var spans = await receiver.WaitForSpansAsync(4);

        // A new trace: the span's trace and span ids are the traceparent's the backend got; the span is the trace's root.
        var first = spans.Single(s => s.GetProperty("attributes").GetProperty("url.path").GetString() == "/api/items");
        Assert.Equal(started, $"00-{first.GetProperty("traceId").GetString()}-{first.GetProperty("spanId").GetString()}-01");
        Assert.Equal("", first.GetProperty("parentSpanId").GetString());
        Assert.Equal("GET /api", first.GetProperty("name").GetString());
        Assert.Equal(2, first.GetProperty("kind").GetInt32()); // SPAN_KIND_SERVER
        Assert.Equal(0, first.GetProperty("status").GetInt32()); // unset
        Assert.Equal(GatewayTracing.SourceName, first.GetProperty("scope").GetString());
        Assert.True(first.TryGetProperty("service", out var service) && service.GetString() == "weft-gateway", $"the span's resource is not service weft-gateway: {first}");
        var attributes = first.GetProperty("attributes");
        Assert.Equal("GET", attributes.GetProperty("http.request.method").GetString());
        Assert.Equal(200, attributes.GetProperty("http.response.status_code").GetInt32());
        Assert.Equal("/api", attributes.GetProperty("http.route").GetString());
        Assert.Equal("http", attributes.GetProperty("url.scheme").GetString());
        Assert.Equal("x.example", attributes.GetProperty("server.address").GetString());
        Assert.Equal("1.1", attributes.GetProperty("network.protocol.version").GetString());
        Assert.Equal("127.0.0.1", attributes.GetProperty("client.address").GetString());
        Assert.Equal("tracing-test/1", attributes.GetProperty("user_agent.original").GetString());
        Assert.Equal("Ingress default/web", attributes.GetProperty("weft.route").GetString());
        Assert.Equal($"127.0.0.1:{backend.Port}", attributes.GetProperty("weft.upstream").GetString());

        // A valid incoming traceparent is the span's remote parent; the backend's traceparent names the gateway's span.
        var second = spans.Single(s => s.GetProperty("attributes").GetProperty("url.path").GetString() == "/api");
        Assert.Equal("0af7651916cd43dd8448eb211c80319c", second.GetProperty("traceId").GetString());
        Assert.Equal("b7ad6b7169203331", second.GetProperty("parentSpanId").GetString());
        Assert.Equal(continued, $"00-0af7651916cd43dd8448eb211c80319c-{second.GetProperty("spanId").GetString()}-01");

        // 5xx is an error of the server span; a 404 (no route) is the client's and leaves the status unset.
        var down = spans.Single(s => s.GetProperty("attributes").GetProperty("url.path").GetString() == "/down");
        Assert.Equal(2, down.GetProperty("status").GetInt32()); // STATUS_CODE_ERROR
        Assert.Equal(503, down.GetProperty("attributes").GetProperty("http.response.status_code").GetInt32());
        Assert.Equal("503", down.GetProperty("attributes").GetProperty("error.type").GetString());
        var notFound = spans.Single(s => s.GetProperty("attributes").GetProperty("server.address").GetString() == "y.example");
        Assert.Equal("GET", notFound.GetProperty("name").GetString());
        Assert.Equal(404, notFound.GetProperty("attributes").GetProperty("http.response.status_code").GetInt32());
        Assert.Equal(0, notFound.GetProperty("status").GetInt32());

        // counted once the collector's answer is back, which can be after the receiver has decoded the spans
        await Weft.Tests.Ca.CaTestPki.WaitUntilAsync(() => gateway.Metrics.SpansExportedCount >= 4);
        Assert.Contains("weft_gateway_spans_exported_total 4", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task CollectorThatNeverAnswers_CostsClientsNothing_SpansPastTheQueueAreDroppedAndCounted()
    {
        // Accepts connections (the kernel's backlog) and never reads or answers: every export waits for its timeout.
        using var blackHole = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        blackHole.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        blackHole.Listen(16);
        await using var gateway = new GatewayLoopback();
        var backend = await gateway.BackendAsync("web");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", backend.Port) + Routes, new GatewayOptions
        {
            Tracing = new GatewayTracingOptions(new Uri($"http://127.0.0.1:{((IPEndPoint)blackHole.LocalEndPoint!).Port}"))
            {
                MaxQueuedSpans = 16,
                MaxSpansPerExport = 8,
                ExportInterval = TimeSpan.FromMilliseconds(50),
                ExportTimeout = TimeSpan.FromSeconds(60),
            },
        });

        // 300 requests, 16 at a time: every one answers, while the first export is still waiting for the collector.
        var statuses = new ConcurrentBag<HttpStatusCode>();
        await Parallel.ForEachAsync(Enumerable.Range(0, 300), new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (i, _) =>
            statuses.Add(await gateway.StatusAsync("x.example", $"/api/{i}")));

        Assert.Equal(300, statuses.Count(s => s == HttpStatusCode.OK));
        Assert.Equal(300, backend.Requests);
        var metrics = await gateway.AdminAsync("/metrics");
        var dropped = gateway.Metrics.SpansDroppedCount("queue_full");
        Assert.True(dropped >= 300 - (3 * 16), $"only {dropped} spans were dropped with a queue of 16 and no export done:\n{metrics}");
        Assert.Contains("weft_gateway_spans_dropped_total{reason=\"queue_full\"}", metrics);
        Assert.Equal(0, gateway.Metrics.SpansExportedCount);
    }

    [Fact]
    public async Task CollectorDown_EveryRequestIsServed_AndTheLostExportsAreCounted()
    {
        var port = Harness.LoopbackPorts.Free();

        await using var gateway = new GatewayLoopback();
        var backend = await gateway.BackendAsync("web");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", backend.Port) + Routes, new GatewayOptions
        {
            Tracing = new GatewayTracingOptions(new Uri($"http://127.0.0.1:{port}")) { ExportInterval = TimeSpan.FromMilliseconds(50) },
        });

        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", $"/api/{i}"));
        }

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (gateway.Metrics.SpansDroppedCount("export_failed") < 20)
        {
            Assert.True(DateTime.UtcNow < deadline, $"the failed exports were not counted:\n{await gateway.AdminAsync("/metrics")}");
            await Task.Delay(100);
        }

        Assert.Equal(0, gateway.Metrics.SpansExportedCount);
    }
}

/// <summary>tests/Gateway/OtlpReceiver/receiver.mjs under Node.js, its npm dependencies installed by <c>npm ci</c> into tests/obj/otlp-receiver.</summary>
internal sealed class OtlpReceiver : IAsyncDisposable
{
    private static readonly SemaphoreSlim InstallGate = new(1, 1);
    private readonly Process _process;
    private readonly ConcurrentQueue<JsonElement> _spans = new();
    private readonly ConcurrentQueue<string> _output = new();

    private OtlpReceiver(Process process) => _process = process;

    public Uri Endpoint { get; private set; } = null!;

    public static async Task<OtlpReceiver> StartAsync()
    {
        var work = await InstallAsync();
        var info = new ProcessStartInfo("node") { WorkingDirectory = work, RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add(Path.Combine(work, "receiver.mjs"));
        var receiver = new OtlpReceiver(Process.Start(info)!);
        var listening = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        receiver._process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not { } line)
            {
                return;
            }

            receiver._output.Enqueue(line);
            if (line.StartsWith("listening ", StringComparison.Ordinal))
            {
                listening.TrySetResult(int.Parse(line["listening ".Length..], System.Globalization.CultureInfo.InvariantCulture));
            }
            else if (line.StartsWith('{'))
            {
                receiver._spans.Enqueue(JsonDocument.Parse(line).RootElement.Clone());
            }
        };
        receiver._process.ErrorDataReceived += (_, e) => receiver._output.Enqueue(e.Data ?? "");
        receiver._process.BeginOutputReadLine();
        receiver._process.BeginErrorReadLine();
        var port = await listening.Task.WaitAsync(TimeSpan.FromSeconds(30));
        receiver.Endpoint = new Uri($"http://127.0.0.1:{port}");
        return receiver;
    }

    public async Task<List<JsonElement>> WaitForSpansAsync(int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (_spans.Count < count)
        {
            Assert.True(DateTime.UtcNow < deadline, $"the receiver got {_spans.Count} spans, not {count}; its output:\n{string.Join('\n', _output)}");
            await Task.Delay(50);
        }

        Assert.DoesNotContain(_spans, s => s.TryGetProperty("unexpected", out _));
        return [.. _spans];
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
        }

        await _process.WaitForExitAsync();
        _process.Dispose();
    }

    private static async Task<string> InstallAsync()
    {
        await InstallGate.WaitAsync();
        try
        {
            var source = Path.Combine(ManifestValidator.RepositoryRoot, "tests", "Gateway", "OtlpReceiver");
            var work = Path.Combine(ManifestValidator.RepositoryRoot, "tests", "obj", "otlp-receiver");
            Directory.CreateDirectory(work);
            var lockHash = Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(Path.Combine(source, "package-lock.json"))));
            foreach (var file in new[] { "package.json", "package-lock.json", "receiver.mjs" })
            {
                File.Copy(Path.Combine(source, file), Path.Combine(work, file), overwrite: true);
            }

            var stamp = Path.Combine(work, "node_modules", ".weft-lock-sha256");
            if (!File.Exists(stamp) || await File.ReadAllTextAsync(stamp) != lockHash)
            {
                var info = new ProcessStartInfo("npm") { WorkingDirectory = work, RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (var arg in new[] { "ci", "--no-audit", "--no-fund", "--loglevel=error" })
                {
                    info.ArgumentList.Add(arg);
                }

                using var npm = Process.Start(info)!;
                var output = npm.StandardOutput.ReadToEndAsync();
                var error = npm.StandardError.ReadToEndAsync();
                await npm.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(8));
                Assert.True(npm.ExitCode == 0, $"npm ci failed in {work} (Node.js and npm come from tests/deps.sh):\n{await output}{await error}");
                await File.WriteAllTextAsync(stamp, lockHash);
            }

            return work;
        }
        finally
        {
            InstallGate.Release();
        }
    }
}
