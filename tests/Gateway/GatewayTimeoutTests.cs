using System.Diagnostics;
using System.Net;
using System.Net.WebSockets;
using System.Text.Json;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>
/// HTTPRoute rule timeouts on the wire, with a real backend that holds or streams its answer and real clients:
/// a held answer becomes a 504 (flag UT, in the metrics and the access log) and the backend sees its request
/// aborted; a response already under way is cut rather than turned into a 504; a WebSocket outlives the
/// timeouts of its route once upgraded; streams and WebSockets on routes without timeouts are untouched.
/// </summary>
public class GatewayTimeoutTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>Longer than the timed route's 1 s, by enough that a loaded machine does not blur the two.</summary>
    private static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(2500);

    /// <summary>
    /// /timed/... goes to the backend's /... with a request timeout of 1 s; everything else goes there without one.
    /// Both listeners (HTTP/1.1, and TLS with HTTP/2) serve both.
    /// </summary>
    private static async Task<(GatewayLoopback Gateway, TrafficBackend Backend)> StartAsync(GatewayOptions? options = null)
    {
        var gateway = new GatewayLoopback();
        var backend = await TrafficBackend.StartAsync("traffic");
        var (_, secret) = GatewayLoopback.TlsSecret("gateway-conformance-infra", "edge-tls", "edge.example");
        var listeners = """
            - {name: http, port: 80, protocol: HTTP}
            - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: edge-tls}]}}
            """;
        await gateway.StartAsync(GatewayYaml.Namespace("gateway-conformance-infra") + GatewayYaml.Service("gateway-conformance-infra", "traffic", backend.Port)
            + secret + GatewayYaml.Gateway(listeners) + """
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: timed, namespace: gateway-conformance-infra}
            spec:
              parentRefs: [{name: same-namespace}]
              rules:
              - matches: [{path: {type: PathPrefix, value: /timed} }]
                filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /} } }]
                backendRefs: [{name: traffic, port: 80}]
                timeouts: {request: 1s}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: untimed, namespace: gateway-conformance-infra}
            spec:
              parentRefs: [{name: same-namespace}]
              rules:
              - backendRefs: [{name: traffic, port: 80}]

            """, options);
        return (gateway, backend);
    }

    private static Uri Url(GatewayLoopback gateway, string version, string path) => new(version == "2.0"
        ? $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}{path}"
        : $"http://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}{path}");

    [Fact]
    public async Task ABackendThatHoldsItsAnswer_PastTheRequestTimeout_Gets504UT_InMetricsAndAccessLog_AndTheBackendSeesTheAbort()
    {
        var log = Path.Combine(Path.GetTempPath(), $"weft-timeout-{Guid.NewGuid():N}.log");
        var (gateway, backend) = await StartAsync(new GatewayOptions { AccessLog = log });
        await using var _ = gateway;
        await using var __ = backend;
        try
        {
            await WarmUpAsync(gateway, gateway.Client, "1.1");
            var watch = Stopwatch.StartNew();
            var answer = gateway.Client.GetAsync(gateway.Http("/timed/hold"));
            await EventuallyAsync(() => backend.Held == 1 || answer.IsCompleted, "the backend never got the request");
            using var response = await answer.WaitAsync(Patience);
            watch.Stop();

            Assert.Equal(HttpStatusCode.GatewayTimeout, response.StatusCode);
            Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(950), TimeSpan.FromSeconds(30));

            // The gateway let go of the backend: its request was aborted (nothing released it).
            await EventuallyAsync(() => backend.Held == 0, "the backend's request was not aborted");
            Assert.Matches(@"istio_requests_total\{[^}]*destination_service_name=""traffic""[^}]*response_code=""504""[^}]*response_flags=""UT""[^}]*\} 1", await gateway.AdminAsync("/metrics"));
            var line = await LogLineAsync(log);
            Assert.Equal(504, line.GetProperty("status").GetInt32());
            Assert.Equal("UT", line.GetProperty("flags").GetString());
            Assert.Equal("HTTPRoute gateway-conformance-infra/timed rule 0", line.GetProperty("route").GetString());

            // The same route answers what comes in time.
            backend.Release();
            using var released = await gateway.Client.GetAsync(gateway.Http("/timed/hold"));
            Assert.Equal(HttpStatusCode.OK, released.StatusCode);
        }
        finally
        {
            File.Delete(log);
        }
    }

    [Theory]
    [InlineData("1.1")]
    [InlineData("2.0")]
    public async Task AResponseAlreadyUnderWay_WhenTheTimeoutFires_IsCut_NotTurnedIntoA504(string version)
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(GatewayStreamingTests.TrustingHandler());
        using var request = new HttpRequestMessage(HttpMethod.Get, Url(gateway, version, "/timed/stream")) { Version = Version.Parse(version), VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        await WarmUpAsync(gateway, client, version);

        // Part 0 comes at once; the backend never gets to send part 1.
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(timeout.Token));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("part 0", await reader.ReadLineAsync(timeout.Token));

        // The client sees the response broken off, never a clean end it could take for the whole answer.
        var cut = await Record.ExceptionAsync(async () => await reader.ReadToEndAsync(timeout.Token));
        Assert.False(timeout.IsCancellationRequested, "the response was not cut");
        Assert.True(cut is IOException or HttpRequestException, $"the response ended without an error: {cut}");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (await MetricsLineAsync(gateway, @"response_code=""200""[^}]*response_flags=""UT""") is null)
        {
            Assert.True(DateTime.UtcNow < deadline, "the cut response is not counted as a 200 with flag UT");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task AWebSocket_OnARouteWithATimeout_LivesOnPastIt_OnceTheBackendAcceptedIt()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using (var warm = new ClientWebSocket())
        {
            // The first upgrade through a new process (JIT, both sides) can take longer than the timeout itself.
            await warm.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/ws"), timeout.Token);
            await GatewayStreamingTests.ExchangeAsync(warm, "warm", timeout.Token);
            await warm.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
        }

        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/timed/ws"), timeout.Token);
        Assert.Equal("traffic: before", await GatewayStreamingTests.ExchangeAsync(socket, "before", timeout.Token));
        await Task.Delay(Quiet, timeout.Token);

        Assert.Equal("traffic: after", await GatewayStreamingTests.ExchangeAsync(socket, "after", timeout.Token));
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
    }

    [Theory]
    [InlineData("1.1")]
    [InlineData("2.0")]
    public async Task OnARouteWithoutTimeouts_AStreamedResponseAndAWebSocket_QuietLongerThanAnotherRoutesTimeout_AreUntouched(string version)
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(GatewayStreamingTests.TrustingHandler());
        using var request = new HttpRequestMessage(HttpMethod.Get, Url(gateway, version, "/stream")) { Version = Version.Parse(version), VersionPolicy = HttpVersionPolicy.RequestVersionExact };

        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/ws"), timeout.Token);
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(timeout.Token));
        Assert.Equal("part 0", await reader.ReadLineAsync(timeout.Token));
        Assert.Equal("traffic: before", await GatewayStreamingTests.ExchangeAsync(socket, "before", timeout.Token));

        await Task.Delay(Quiet, timeout.Token);
        backend.StreamParts.Release();
        Assert.Equal("part 1", await reader.ReadLineAsync(timeout.Token));
        await Task.Delay(Quiet, timeout.Token);
        backend.StreamParts.Release();
        Assert.Equal("part 2", await reader.ReadLineAsync(timeout.Token));
        Assert.Null(await reader.ReadLineAsync(timeout.Token));

        Assert.Equal("traffic: after", await GatewayStreamingTests.ExchangeAsync(socket, "after", timeout.Token));
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
        Assert.Null(await MetricsLineAsync(gateway, @"response_flags=""UT"""));
    }

    /// <summary>A first request on the route without timeouts: the first one through a new process can take longer than the timeout.</summary>
    private static async Task WarmUpAsync(GatewayLoopback gateway, HttpClient client, string version)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, Url(gateway, version, "/")) { Version = Version.Parse(version), VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var response = await client.SendAsync(request);
        Assert.Equal("traffic", await response.Content.ReadAsStringAsync());
    }

    private static async Task<string?> MetricsLineAsync(GatewayLoopback gateway, string pattern)
    {
        var metrics = await gateway.AdminAsync("/metrics");
        return metrics.Split('\n').FirstOrDefault(l => l.StartsWith("istio_requests_total{", StringComparison.Ordinal) && System.Text.RegularExpressions.Regex.IsMatch(l, pattern));
    }

    /// <summary>The access log line of the one request to /timed/...</summary>
    private static async Task<JsonElement> LogLineAsync(string path)
    {
        string? line = null;
        await EventuallyAsync(
            () => (line = File.Exists(path) ? File.ReadLines(path).FirstOrDefault(l => l.Contains("\"path\":\"/timed/", StringComparison.Ordinal)) : null) is not null,
            "no access log line for /timed/hold");
        return JsonDocument.Parse(line!).RootElement.Clone();
    }

    private static async Task EventuallyAsync(Func<bool> condition, string failure)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure);
            await Task.Delay(20);
        }
    }
}
