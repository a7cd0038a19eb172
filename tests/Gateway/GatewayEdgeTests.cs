using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace Weft.Tests.Gateway;

/// <summary>
/// The gateway at the edge, seen from real clients on loopback: TLS by SNI (several certificates, rotation,
/// unknown names), forwarding headers and trace context, metrics, passive health, hot reload, and bad input.
/// </summary>
public partial class GatewayEdgeTests
{
    private static string Ingress(string name, string host, string path, string service, string extra = "") => $$"""
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: {{name}}, namespace: default}
        spec:
          ingressClassName: weft
        {{extra}}
          rules:
          - host: "{{host}}"
            http:
              paths:
              - {pathType: Prefix, path: "{{path}}", backend: {service: {name: {{service}}, port: {number: 80} } } }

        """;

    private static string Tls(string hosts, string secret) => $"  tls: [{{hosts: [{hosts}], secretName: {secret}}}]";

    private static async Task<(GatewayLoopback Gateway, EchoBackend Web, EchoBackend Admin)> StartAsync(string extra = "")
    {
        var gateway = new GatewayLoopback();
        var web = await gateway.BackendAsync("web");
        var admin = await gateway.BackendAsync("admin");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", web.Port) + GatewayYaml.Service("default", "admin", admin.Port)
            + Ingress("web", "x.example", "/", "web") + Ingress("admin", "x.example", "/admin", "admin") + extra);
        return (gateway, web, admin);
    }

    [Fact]
    public async Task Sni_PicksTheCertificateOfTheName_AmongSeveral_AndHttp2IsNegotiated()
    {
        var (a, secretA) = GatewayLoopback.TlsSecret("default", "a-tls", "a.example");
        var (b, secretB) = GatewayLoopback.TlsSecret("default", "b-tls", "*.b.example");
        var (gateway, _, _) = await StartAsync(secretA + secretB
            + Ingress("a", "a.example", "/", "web", Tls("a.example", "a-tls")) + Ingress("b", "*.b.example", "/", "web", Tls("\"*.b.example\"", "b-tls")));
        await using var _ = gateway;

        var toA = await gateway.HandshakeAsync("a.example");
        var toB = await gateway.HandshakeAsync("www.b.example");

        Assert.Equal(a.Thumbprint, toA.Certificate?.Thumbprint);
        Assert.Equal(b.Thumbprint, toB.Certificate?.Thumbprint);
        Assert.Equal("h2", toA.Protocol);

        using var client = HttpRouteConformanceTests.HttpsClient("www.b.example", out var served);
        using var request = new HttpRequestMessage(HttpMethod.Get, $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}/") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        request.Headers.Host = "www.b.example";
        using var response = await client.SendAsync(request);
        var body = await response.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Contains("\"x-forwarded-proto\":\"https\"", body);
        Assert.Equal(b.Thumbprint, served()?.Thumbprint);
    }

    [Fact]
    public async Task UnknownSni_IsRefusedAtTheHandshake_AndCounted_WhenNoDefaultCertificateExists()
    {
        var (_, secretA) = GatewayLoopback.TlsSecret("default", "a-tls", "a.example");
        var (gateway, _, _) = await StartAsync(secretA + Ingress("a", "a.example", "/", "web", Tls("a.example", "a-tls")));
        await using var _ = gateway;

        var unknown = await gateway.HandshakeAsync("nobody.example");
        var none = await gateway.HandshakeAsync(null);

        Assert.NotNull(unknown.Error);
        Assert.NotNull(none.Error);
        Assert.Equal(2, gateway.Metrics.TlsRefusedCount);
        Assert.NotNull((await gateway.HandshakeAsync("a.example")).Certificate); // the listener is still fine
    }

    [Fact]
    public async Task UnknownSni_GetsTheDefaultCertificate_WhenATlsEntryHasNoHosts()
    {
        var (fallback, secret) = GatewayLoopback.TlsSecret("default", "default-tls", "default.example");
        var (gateway, _, _) = await StartAsync(secret + Ingress("d", "d.example", "/", "web", "  tls: [{secretName: default-tls}]"));
        await using var _ = gateway;

        Assert.Equal(fallback.Thumbprint, (await gateway.HandshakeAsync("nobody.example")).Certificate?.Thumbprint);
    }

    [Fact]
    public async Task RotatedSecret_IsServedToNewHandshakes_WithoutRestart()
    {
        var (first, secret1) = GatewayLoopback.TlsSecret("default", "a-tls", "a.example");
        var (second, secret2) = GatewayLoopback.TlsSecret("default", "a-tls", "a.example");
        var rest = Ingress("a", "a.example", "/", "web", Tls("a.example", "a-tls"));
        var (gateway, web, admin) = await StartAsync(secret1 + rest);
        await using var _ = gateway;
        Assert.Equal(first.Thumbprint, (await gateway.HandshakeAsync("a.example")).Certificate?.Thumbprint);

        await gateway.UpdateAsync(GatewayYaml.Service("default", "web", web.Port) + GatewayYaml.Service("default", "admin", admin.Port) + secret2 + rest);

        Assert.Equal(second.Thumbprint, (await gateway.HandshakeAsync("a.example")).Certificate?.Thumbprint);
    }

    [Fact]
    public async Task ForwardedHeaders_AreAppendedAndSet()
    {
        var (gateway, _, _) = await StartAsync();
        await using var _ = gateway;

        var plain = await gateway.EchoAsync("x.example", "/");
        var behindProxy = await gateway.EchoAsync("x.example", "/", r => r.Headers.Add("X-Forwarded-For", "203.0.113.9"));

        Assert.Equal("127.0.0.1", plain.Headers["x-forwarded-for"]);
        Assert.Equal("203.0.113.9, 127.0.0.1", behindProxy.Headers["x-forwarded-for"]);
        Assert.Equal("http", plain.Headers["x-forwarded-proto"]);
        Assert.Equal("x.example", plain.Host);
    }

    [Fact]
    public async Task TraceParent_IsStartedWhenAbsent_AndContinuedWhenPresent()
    {
        var (gateway, _, _) = await StartAsync();
        await using var _ = gateway;

        var started = (await gateway.EchoAsync("x.example", "/")).Headers["traceparent"];
        var incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        var continued = (await gateway.EchoAsync("x.example", "/", r => r.Headers.Add("traceparent", incoming))).Headers["traceparent"];
        var garbage = (await gateway.EchoAsync("x.example", "/", r => r.Headers.Add("traceparent", "not-a-trace"))).Headers["traceparent"];

        Assert.Matches(TraceParentFormat(), started);
        Assert.Matches(TraceParentFormat(), garbage);
        Assert.StartsWith("00-0af7651916cd43dd8448eb211c80319c-", continued, StringComparison.Ordinal);
        Assert.EndsWith("-01", continued, StringComparison.Ordinal);
        Assert.NotEqual(incoming, continued); // the gateway's own span is the parent now
    }

    [GeneratedRegex("^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")]
    private static partial Regex TraceParentFormat();

    [Fact]
    public async Task Metrics_CountRequests_ByDestinationAndResponseCode()
    {
        var (gateway, _, _) = await StartAsync();
        await using var _ = gateway;

        await gateway.EchoAsync("x.example", "/");
        await gateway.EchoAsync("x.example", "/");
        Assert.Equal(HttpStatusCode.NotFound, await gateway.StatusAsync("nothing.example", "/"));
        var metrics = await gateway.AdminAsync("/metrics");

        Assert.Matches(@"istio_requests_total\{[^}]*destination_service_name=""web""[^}]*response_code=""200""[^}]*\} 2", metrics);
        Assert.Matches(@"istio_requests_total\{[^}]*response_code=""404""[^}]*response_flags=""NR""[^}]*\} 1", metrics);
        Assert.Matches(@"istio_request_duration_milliseconds_count\{[^}]*destination_service_name=""web""[^}]*response_code=""200""[^}]*\} 2", metrics);
    }

    [Fact]
    public async Task BackendDown_Answers503Promptly_AndIsEjected_SoTheLiveEndpointServes()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        var live = await gateway.BackendAsync("live");
        var deadPort = FreePort();
        await gateway.StartAsync(GatewayYaml.Service("default", "web", live.Port, deadPort) + GatewayYaml.Service("default", "down", deadPort)
            + Ingress("web", "x.example", "/", "web") + Ingress("down", "down.example", "/", "down"));

        var watch = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal(HttpStatusCode.ServiceUnavailable, await gateway.StatusAsync("down.example", "/"));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"took {watch.Elapsed}");

        // Round robin reaches the dead endpoint at most once before it is ejected.
        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 20; i++)
        {
            statuses.Add(await gateway.StatusAsync("x.example", "/"));
        }

        Assert.True(statuses.Count(s => s != HttpStatusCode.OK) <= 1, string.Join(",", statuses));
        Assert.True(gateway.Metrics.EjectionCount >= 1);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, await gateway.StatusAsync("down.example", "/")); // ejected: 503 without trying
    }

    [Fact]
    public async Task ChangedFile_IsServedWithoutRestart_AndAMalformedOne_KeepsTheLastGoodRoutes()
    {
        var (gateway, web, admin) = await StartAsync();
        await using var _ = gateway;
        Assert.Equal("web", (await gateway.EchoAsync("x.example", "/other")).Backend);

        var services = GatewayYaml.Service("default", "web", web.Port) + GatewayYaml.Service("default", "admin", admin.Port);
        await gateway.UpdateAsync(services + Ingress("moved", "x.example", "/other", "admin") + Ingress("web", "x.example", "/", "web"));
        Assert.Equal("admin", (await gateway.EchoAsync("x.example", "/other")).Backend);

        await gateway.UpdateAsync("apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n", expectValid: false);
        Assert.Equal("admin", (await gateway.EchoAsync("x.example", "/other")).Backend);
        Assert.Contains("config error (serving the last good version)", await gateway.AdminAsync("/routes"));
        Assert.Contains("weft_gateway_config_stale 1", await gateway.AdminAsync("/metrics"));
    }

    [Theory]
    [InlineData("/a/../admin")]
    [InlineData("/%2e%2e/admin")]
    [InlineData("/web/%2E%2E/admin")]
    [InlineData("//admin")]
    [InlineData("/./admin")]
    public async Task PathTricks_AreRoutedByTheNormalizedPath(string path)
    {
        var (gateway, web, admin) = await StartAsync();
        await using var _ = gateway;

        var response = await RawAsync(gateway, $"GET {path} HTTP/1.1\r\nHost: x.example\r\nConnection: close\r\n\r\n");

        Assert.StartsWith("HTTP/1.1 200", response, StringComparison.Ordinal);
        Assert.Contains("\"Backend\":\"admin\"", response);
        Assert.Equal(["/admin"], admin.Paths);
        Assert.Equal(0, web.Requests);
    }

    [Fact]
    public async Task ContentLengthWithTransferEncoding_CannotSmuggleASecondRequest()
    {
        var (gateway, web, admin) = await StartAsync();
        await using var _ = gateway;

        var response = await RawAsync(gateway,
            "POST / HTTP/1.1\r\nHost: x.example\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x.example\r\n\r\n");

        // Kestrel reads the body as chunked (RFC 9112 6.3) and closes the connection after its answer, so the
        // bytes after the chunked body are never a request.
        Assert.Matches("^HTTP/1.1 (200|400) ", response);
        Assert.Equal(0, admin.Requests);
        Assert.True(web.Requests <= 1);
        Assert.Single(Regex.Matches(response, "HTTP/1.1 "));
    }

    [Fact]
    public async Task TwoContentLengths_AreRejectedWith400_AndReachNoBackend()
    {
        var (gateway, web, admin) = await StartAsync();
        await using var _ = gateway;

        var response = await RawAsync(gateway, "POST / HTTP/1.1\r\nHost: x.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");

        Assert.StartsWith("HTTP/1.1 400", response, StringComparison.Ordinal);
        Assert.Equal(0, web.Requests + admin.Requests);
        Assert.Equal("web", (await gateway.EchoAsync("x.example", "/")).Backend); // other clients are unaffected
    }

    [Fact]
    public async Task OversizedHeaders_Get431_AndReachNoBackend()
    {
        var (gateway, web, _) = await StartAsync();
        await using var _ = gateway;

        var response = await RawAsync(gateway, $"GET / HTTP/1.1\r\nHost: x.example\r\nX-Big: {new string('a', 40 * 1024)}\r\nConnection: close\r\n\r\n");

        Assert.StartsWith("HTTP/1.1 431", response, StringComparison.Ordinal);
        Assert.Equal(0, web.Requests);
        Assert.Equal("web", (await gateway.EchoAsync("x.example", "/")).Backend);
    }

    [Fact]
    public async Task InvalidHost_GetsA400()
    {
        var (gateway, web, _) = await StartAsync();
        await using var _ = gateway;

        var response = await RawAsync(gateway, "GET / HTTP/1.1\r\nHost: bad host/\r\nConnection: close\r\n\r\n");

        Assert.StartsWith("HTTP/1.1 400", response, StringComparison.Ordinal);
        Assert.Equal(0, web.Requests);
    }

    [Fact]
    public async Task ConnectionsPastTheLimit_AreClosedOnAccept_AndCounted_WhileHeldOnesStillWork()
    {
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        var web = await gateway.BackendAsync("web");
        await gateway.StartAsync(GatewayYaml.Service("default", "web", web.Port) + Ingress("web", "x.example", "/", "web"), new Weft.Gateway.GatewayOptions { MaxConnections = 2 });
        var port = gateway.Server.HttpEndpoint!.Port;
        using var first = new TcpClient();
        using var second = new TcpClient();
        await first.ConnectAsync(IPAddress.Loopback, port);
        await second.ConnectAsync(IPAddress.Loopback, port);
        await WaitForAsync(() => gateway.Metrics.ConnectionsOpen == 2);

        using var third = new TcpClient();
        await third.ConnectAsync(IPAddress.Loopback, port);
        using var closed = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var read = await third.GetStream().ReadAsync(new byte[1], closed.Token);

        Assert.Equal(0, read);
        Assert.Equal(1, gateway.Metrics.ConnectionsRefusedCount);
        await first.GetStream().WriteAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x.example\r\n\r\n"));
        var buffer = new byte[4096];
        var answer = Encoding.ASCII.GetString(buffer, 0, await first.GetStream().ReadAsync(buffer, closed.Token));
        Assert.StartsWith("HTTP/1.1 200", answer, StringComparison.Ordinal);
        Assert.Contains("weft_gateway_client_connections_refused_total 1", await gateway.AdminAsync("/metrics"));
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in 30 s");
            await Task.Delay(20);
        }
    }

    private static int FreePort() => Harness.LoopbackPorts.Free();

    /// <summary>Writes bytes as they are (no client library to tidy them) and reads until the gateway closes or goes quiet.</summary>
    private static async Task<string> RawAsync(GatewayLoopback gateway, string request)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, gateway.Server.HttpEndpoint!.Port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request));
        var received = new MemoryStream();
        var buffer = new byte[16 * 1024];
        using var quiet = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        try
        {
            while (true)
            {
                var read = await stream.ReadAsync(buffer, quiet.Token);
                if (read == 0)
                {
                    break;
                }

                received.Write(buffer, 0, read);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            // Quiet for 15 s, or reset after the answer: what arrived is the answer.
        }

        return Encoding.ASCII.GetString(received.ToArray());
    }
}
