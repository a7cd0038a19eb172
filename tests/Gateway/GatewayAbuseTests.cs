using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Weft.Gateway;
using Weft.Harness;
using Weft.Node;
using Xunit.Abstractions;

namespace Weft.Tests.Gateway;

/// <summary>
/// Clients that hold the gateway's resources on purpose: slowloris on the request head is cut after the
/// headers timeout, on the request body by the minimum body rate, and 10,000 idle keep-alive connections
/// hold bounded memory; other clients are served meanwhile. Every wait is bounded and every peer is closed
/// in finally, so a loaded machine makes these slow, never hung.
/// </summary>
public class GatewayAbuseTests(ITestOutputHelper output)
{
    private static readonly GatewayOptions Impatient = new()
    {
        RequestHeadersTimeout = TimeSpan.FromSeconds(2),
        MinDataRateGrace = TimeSpan.FromSeconds(2),
    };

    private static async Task<(GatewayLoopback Gateway, TrafficBackend Backend)> StartAsync(GatewayOptions options)
    {
        var gateway = new GatewayLoopback();
        var backend = await TrafficBackend.StartAsync("traffic");
        await gateway.StartAsync(GatewayStreamingTests.Yaml(backend, GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example").SecretYaml), options);
        return (gateway, backend);
    }

    /// <summary>Writes <paramref name="head"/>, then one more byte of <paramref name="trickle"/> every 300 ms; how long until the gateway closed the connection, and what it answered.</summary>
    private static async Task<(TimeSpan ClosedAfter, string Answer)> TrickleAsync(int port, string head, string trickle)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, port);
        var stream = tcp.GetStream();
        var watch = Stopwatch.StartNew();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        var answer = new StringBuilder();
        var reading = Task.Run(async () =>
        {
            var buffer = new byte[4096];
            try
            {
                int read;
                while ((read = await stream.ReadAsync(buffer)) > 0)
                {
                    answer.Append(Encoding.ASCII.GetString(buffer, 0, read));
                }
            }
            catch (IOException)
            {
                // reset: closed too
            }
        });
        for (var i = 0; !reading.IsCompleted && watch.Elapsed < TimeSpan.FromSeconds(90); i++)
        {
            try
            {
                await stream.WriteAsync(Encoding.ASCII.GetBytes(trickle[(i % trickle.Length)..((i % trickle.Length) + 1)]));
            }
            catch (IOException)
            {
                break;
            }

            await Task.WhenAny(reading, Task.Delay(300));
        }

        await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(30)));
        Assert.True(reading.IsCompleted, $"the gateway still holds a slowloris connection after {watch.Elapsed}");
        return (watch.Elapsed, answer.ToString());
    }

    [Fact]
    public async Task OnThePlainListener_ASilentConnection_AndAPrefaceThatStalls_AreClosedByTheirTimeouts_WhileOthersAreServed()
    {
        // Before a connection is HTTP/1.1 or h2c the gateway waits for its first bytes: the keep-alive timeout, then the
        // request headers timeout once an HTTP/2 preface has begun (Kestrel's own timers start after that).
        var (gateway, backend) = await StartAsync(Impatient with { KeepAliveTimeout = TimeSpan.FromSeconds(2) });
        await using var _ = gateway;
        await using var __ = backend;
        var port = gateway.Server.HttpEndpoint!.Port;

        async Task<TimeSpan> ClosedAfterAsync(string sent)
        {
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(IPAddress.Loopback, port);
            var watch = Stopwatch.StartNew();
            await tcp.GetStream().WriteAsync(Encoding.ASCII.GetBytes(sent));
            using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            var read = await tcp.GetStream().ReadAsync(new byte[64], patience.Token);
            Assert.Equal(0, read);
            return watch.Elapsed;
        }

        var silent = ClosedAfterAsync("");
        var stalled = ClosedAfterAsync("PRI * HTTP/2.0\r\n");
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false });
        Assert.Equal("traffic", await client.GetStringAsync(gateway.Http("/")));

        Assert.InRange(await silent, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(20));
        Assert.InRange(await stalled, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(20));
        var metrics = await gateway.AdminAsync("/metrics");
        Assert.Contains("weft_gateway_client_disconnects_total{reason=\"keep_alive_timeout\"} 1", metrics);
        Assert.Contains("weft_gateway_client_disconnects_total{reason=\"request_headers_timeout\"} 1", metrics);
    }

    [Fact]
    public async Task RequestsPastMaxRequests_Get503UO_AtOnce_AndTheBackendNeverSeesThem_WhileTheHeldOnesAreAnswered()
    {
        var (gateway, backend) = await StartAsync(new GatewayOptions { MaxRequestsInFlight = 20 });
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false, MaxConnectionsPerServer = 100 });

        // 20 requests the backend holds: each holds a backend connection, as a slow backend or a quiet WebSocket would.
        var held = Enumerable.Range(0, 20).Select(_ => client.GetAsync(gateway.Http("/hold"), timeout.Token)).ToList();
        while (backend.Held < held.Count)
        {
            await Task.Delay(50, timeout.Token);
        }

        // Past the limit: 503 at once, flagged UO, counted; the backend is not asked.
        for (var i = 0; i < 5; i++)
        {
            using var refused = await client.GetAsync(gateway.Http("/hold"), timeout.Token);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        }

        Assert.Equal(20, backend.Held);
        var metrics = await gateway.AdminAsync("/metrics");
        Assert.Contains("weft_gateway_requests_refused_total 5", metrics);
        Assert.Matches(@"istio_requests_total\{[^}]*response_code=""503""[^}]*response_flags=""UO""[^}]*\} 5", metrics);

        // The held ones are answered, and once they are, requests go through again.
        backend.Release();
        foreach (var response in await Task.WhenAll(held))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            response.Dispose();
        }

        Assert.Equal("traffic held", await client.GetStringAsync(gateway.Http("/hold"), timeout.Token));
    }

    [Fact]
    public async Task SlowlorisOnTheRequestHead_IsDisconnectedAfterTheHeadersTimeout_WhileOthersAreServed()
    {
        var (gateway, backend) = await StartAsync(Impatient);
        await using var _ = gateway;
        await using var __ = backend;

        var slow = TrickleAsync(gateway.Server.HttpEndpoint!.Port, "GET / HTTP/1.1\r\nHost: x.example\r\n", "X-Slow: a\r\n");
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
        var (closedAfter, answer) = await slow;

        output.WriteLine($"closed after {closedAfter}: {answer}");
        Assert.True(closedAfter >= TimeSpan.FromSeconds(1.5), $"closed after {closedAfter}, before the 2 s timeout");
        Assert.True(answer.Length == 0 || answer.StartsWith("HTTP/1.1 408", StringComparison.Ordinal), answer);
        await KestrelCountedAsync(gateway, "request_headers_timeout");
    }

    [Fact]
    public async Task SlowlorisOnTheRequestBody_IsDisconnectedByTheMinimumBodyRate_WhileOthersAreServed()
    {
        var (gateway, backend) = await StartAsync(Impatient);
        await using var _ = gateway;
        await using var __ = backend;

        // 100,000 bytes announced, one sent every 300 ms: about 3 B/s against the 240 B/s minimum after a 2 s grace.
        var slow = TrickleAsync(gateway.Server.HttpEndpoint!.Port, "POST /upload HTTP/1.1\r\nHost: x.example\r\nContent-Length: 100000\r\n\r\n", "a");
        await Task.Delay(TimeSpan.FromSeconds(1));
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
        var (closedAfter, answer) = await slow;

        output.WriteLine($"closed after {closedAfter}: {answer}");
        Assert.True(closedAfter >= TimeSpan.FromSeconds(1.5), $"closed after {closedAfter}, before the 2 s grace");
        Assert.True(answer.Length == 0 || answer.StartsWith("HTTP/1.1 4", StringComparison.Ordinal), answer);
        Assert.True(backend.Uploaded.Sum(part => part.Length) < 100_000, "the backend got the whole body");
        await KestrelCountedAsync(gateway, "min_request_body_data_rate");
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
    }

    [Fact]
    public async Task ClientThatStopsReadingALargeResponse_IsDisconnectedAfterTheSendTimeout_WhileOthersAreServed()
    {
        var sendTimeout = TimeSpan.FromSeconds(3);
        // Kestrel's own minimum response rate keeps its default grace here, so the send timeout is what cuts.
        var (gateway, backend) = await StartAsync(new GatewayOptions { ResponseSendTimeout = sendTimeout });
        await using var _ = gateway;
        await using var __ = backend;

        // A real socket with a small receive buffer asks for 256 MiB and never reads: the kernel buffers fill, then
        // the gateway's writes wait on the client.
        using var stalled = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        await stalled.ConnectAsync(IPAddress.Loopback, gateway.Server.HttpEndpoint!.Port);
        var watch = Stopwatch.StartNew();
        await stalled.SendAsync(Encoding.ASCII.GetBytes("GET /large HTTP/1.1\r\nHost: x.example\r\n\r\n"));

        // Others are served while it stalls.
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
        while (gateway.Metrics.ClientCutCount("response_stalled") < 1 && watch.Elapsed < TimeSpan.FromSeconds(90))
        {
            await Task.Delay(100);
        }

        var cutAfter = watch.Elapsed;
        output.WriteLine($"cut after {cutAfter} (send timeout {sendTimeout}); the backend wrote {backend.LargeBytesWritten} bytes; load {File.ReadAllText("/proc/loadavg").Trim()}");
        Assert.True(gateway.Metrics.ClientCutCount("response_stalled") == 1, $"the gateway still holds a client that stopped reading after {cutAfter}");
        Assert.True(cutAfter >= sendTimeout, $"cut after {cutAfter}, before the {sendTimeout} send timeout");

        // The client, reading at last, gets what was buffered and then the end of the connection, never the whole body.
        var received = 0L;
        var buffer = new byte[64 * 1024];
        using (var reading = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            try
            {
                int read;
                while ((read = await stalled.ReceiveAsync(buffer, SocketFlags.None, reading.Token)) > 0)
                {
                    received += read;
                }
            }
            catch (SocketException)
            {
                // reset: closed too
            }
        }

        Assert.True(received < 256L * 1024 * 1024, $"the client got all {received} bytes");

        // The backend's request was let go too (the gateway holds nothing for it), and the next client is served.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (backend.LargeAborted < 1 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }

        Assert.Equal(1, backend.LargeAborted);
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
        Assert.Contains("weft_gateway_client_disconnects_total{reason=\"response_stalled\"} 1", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task TenThousandIdleKeepAliveConnections_HoldBoundedMemory_WhileOthersAreServed()
    {
        const int Idle = 10_000;

        // The gateway (a child: its RSS is its own) and the idle client (python) each hold a descriptor per connection
        // and inherit this process's limit; raise it as weft-bench does, or say why not.
        const ulong Needed = Idle + 2_048;
        if (DescriptorLimit.Get() is not { } limit || (limit.Soft < Needed && !DescriptorLimit.TrySet(Math.Max(Needed, limit.Soft), Math.Max(Needed, limit.Hard))))
        {
            Assert.Fail($"RLIMIT_NOFILE is {DescriptorLimit.Get()} and cannot be raised to {Needed} (root or a higher hard limit: ulimit -Hn); the test needs a descriptor per idle connection");
        }

        await using var web = await EchoBackend.StartAsync("web");
        var dir = Directory.CreateTempSubdirectory("weft-gateway-idle-").FullName;
        var inventory = Path.Combine(dir, "gateway.yaml");
        await File.WriteAllTextAsync(inventory, GatewayYaml.Service("default", "web", web.Port) + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: web, namespace: default}
            spec:
              ingressClassName: weft
              rules:
              - host: web.example
                http: {paths: [{pathType: Prefix, path: /, backend: {service: {name: web, port: {number: 80}}}}]}

            """);
        var (httpPort, adminPort) = (GatewayCommandTests.FreePort(), GatewayCommandTests.FreePort());
        await using var gateway = ManagedProcess.StartWeft("gateway", "--inventory", inventory, "--http", $"127.0.0.1:{httpPort}", "--https", "off",
            "--admin", $"127.0.0.1:{adminPort}", "--max-connections", (Idle + 100).ToString(CultureInfo.InvariantCulture));
        Process? idle = null;
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false }) { Timeout = TimeSpan.FromSeconds(30) };
        try
        {
            Assert.Contains("\"Backend\":\"web\"", await GatewayCommandTests.CurlUntilAsync(httpPort, "\"web\"", gateway));
            await Task.Delay(TimeSpan.FromSeconds(2));
            var before = RssKib(gateway.Pid);

            // One process, one connection at a time (python's http.client, one request each, answered 404), then held open.
            var script = $$$"""
                import http.client, sys
                held = []
                try:
                    for i in range({{{Idle}}}):
                        c = http.client.HTTPConnection("127.0.0.1", {{{httpPort}}}, timeout=30)
                        c.request("GET", "/", headers={"Host": "idle.example"})
                        r = c.getresponse()
                        r.read()
                        held.append(c)
                except Exception as e:
                    print("failed after", len(held), repr(e), flush=True)
                    sys.exit(1)
                print("held", len(held), flush=True)
                sys.stdin.readline()
                """;
            idle = Process.Start(new ProcessStartInfo("/usr/bin/python3", ["-c", script]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true })!;
            var line = await idle.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromMinutes(5));
            Assert.True(line == $"held {Idle}", $"the idle client: {line} {(idle.HasExited ? await idle.StandardError.ReadToEndAsync() : "")}");

            // The gateway holds them all, and answers a new client through a new connection meanwhile.
            var metrics = await client.GetStringAsync($"http://127.0.0.1:{adminPort}/metrics");
            Assert.True(Gauge(metrics, "weft_gateway_client_connections") >= Idle, metrics);
            using (var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{httpPort}/served"))
            {
                request.Headers.Host = "web.example";
                using var response = await client.SendAsync(request);
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Contains("\"web\"", await response.Content.ReadAsStringAsync());
            }

            await Task.Delay(TimeSpan.FromSeconds(2));
            var loaded = RssKib(gateway.Pid);
            var perConnection = (loaded - before) / (double)Idle;
            output.WriteLine($"gateway RSS {before} KiB idle, {loaded} KiB with {Idle} idle keep-alive connections: {perConnection:0.00} KiB per connection; load {File.ReadAllText("/proc/loadavg").Trim()}");

            // About 9.4 KiB per connection measured (docs/benchmark.md); a buffer held per idle connection would be far more.
            Assert.True(perConnection < 64, $"{perConnection:0.0} KiB per idle connection");
            Assert.False(gateway.HasExited, gateway.Output);
        }
        finally
        {
            if (idle is not null)
            {
                idle.StandardInput.Close();
                if (!idle.WaitForExit(TimeSpan.FromSeconds(30)))
                {
                    idle.Kill();
                }

                idle.Dispose();
            }

            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The connection Kestrel cut shows in /metrics under Kestrel's reason (counted when the connection has ended).</summary>
    private static async Task KestrelCountedAsync(GatewayLoopback gateway, string reason)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (gateway.Metrics.ClientCutCount(reason) < 1 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }

        Assert.Contains($"weft_gateway_client_disconnects_total{{reason=\"{reason}\"}} 1", await gateway.AdminAsync("/metrics"));
    }

    private static long RssKib(int pid) =>
        long.Parse(File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);

    /// <summary>The value of an unlabelled sample in Prometheus text.</summary>
    private static double Gauge(string metrics, string name) =>
        double.Parse(metrics.Split('\n').First(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..], CultureInfo.InvariantCulture);
}
