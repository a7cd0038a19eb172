using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Weft.Cli;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>
/// Gateways served on addresses of their own (--gateway-http, --gateway-https): each Gateway's HTTPS listeners alone with
/// its own certificates by SNI over real TLS, the /routes admin view of what each address serves, and how the command
/// derives each Gateway's status address.
/// </summary>
public class GatewayOwnAddressTests
{
    private const string Infra = "gateway-conformance-infra";

    /// <summary>Gateway a (HTTPS for a.example) and b (HTTPS for b.example), each with its own certificate and route.</summary>
    private static (string Yaml, X509Certificate2 A, X509Certificate2 B, string SecretA) TwoHttpsGateways()
    {
        var (a, secretA) = GatewayLoopback.TlsSecret(Infra, "cert-a", "a.example");
        var (b, secretB) = GatewayLoopback.TlsSecret(Infra, "cert-b", "b.example");
        var yaml = GatewayYaml.Gateway("- {name: https, port: 443, protocol: HTTPS, hostname: a.example, tls: {certificateRefs: [{name: cert-a}]}}", name: "a")
            + GatewayYaml.Gateway("- {name: https, port: 443, protocol: HTTPS, hostname: b.example, tls: {certificateRefs: [{name: cert-b}]}}", name: "b")
            + secretA + secretB + Route("route-a", "a", "infra-backend-v1") + Route("route-b", "b", "infra-backend-v2");
        return (yaml, a, b, secretA);
    }

    internal static string Route(string name, string gateway, string backend, string path = "/") => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: {{name}}, namespace: gateway-conformance-infra}
        spec:
          parentRefs: [{name: {{gateway}}}]
          rules:
          - matches: [{path: {type: PathPrefix, value: {{path}} } }]
            backendRefs: [{name: {{backend}}, port: 80}]

        """;

    /// <summary>A GET over real TLS with this SNI and Host: the status, the backend that answered (or null) and the certificate served.</summary>
    internal static async Task<(HttpStatusCode Status, string? Backend, X509Certificate2? Certificate, Version Version)> HttpsGetAsync(int port, string serverName, string host)
    {
        using var client = HttpRouteConformanceTests.HttpsClient(serverName, out var served);
        using var request = new HttpRequestMessage(HttpMethod.Get, $"https://127.0.0.1:{port}/") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionOrLower };
        request.Headers.Host = host;
        using var response = await client.SendAsync(request);
        var body = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, response.IsSuccessStatusCode ? JsonSerializer.Deserialize<Echo>(body)!.Backend : null, served(), response.Version);
    }

    /// <summary>An HTTP/1.1 GET over TLS with this SNI and another Host, which HttpClient would not send (it takes the SNI from Host): the status line.</summary>
    private static async Task<string> RawHttpsGetAsync(int port, string serverName, string host)
    {
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, port);
        await using var tls = new SslStream(tcp.GetStream());
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = serverName,
            ApplicationProtocols = [SslApplicationProtocol.Http11],
            RemoteCertificateValidationCallback = (_, _, _, _) => true,
        });
        await tls.WriteAsync(System.Text.Encoding.ASCII.GetBytes($"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        using var reader = new StreamReader(tls, System.Text.Encoding.ASCII);
        return await reader.ReadLineAsync() ?? "";
    }

    /// <summary>A bare TLS handshake with this SNI: the certificate served, or null when the gateway refused it.</summary>
    internal static async Task<X509Certificate2?> HandshakeAsync(int port, string serverName)
    {
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, port);
        await using var tls = new SslStream(tcp.GetStream());
        try
        {
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = serverName, RemoteCertificateValidationCallback = (_, _, _, _) => true });
            return new X509Certificate2(tls.RemoteCertificate!);
        }
        catch (Exception ex) when (ex is System.Security.Authentication.AuthenticationException or IOException)
        {
            return null;
        }
    }

    [Fact]
    public async Task GatewayHttps_ServesEachGatewaysHttpsListenersAlone_WithOnlyItsCertificatesBySni_AndHttpsServesBoth()
    {
        var (yaml, certA, certB, secretA) = TwoHttpsGateways();
        await using var gateway = new GatewayLoopback();
        var backends = await gateway.ConformanceBackendsAsync();
        await gateway.StartAsync(backends + yaml, new GatewayOptions
        {
            GatewayHttps = new Dictionary<string, IPEndPoint>
            {
                [$"{Infra}/a"] = new(IPAddress.Loopback, 0),
                [$"{Infra}/b"] = new(IPAddress.Loopback, 0),
            },
        });
        var (portA, portB, shared) = (gateway.Server.GatewayHttpsEndpoints[$"{Infra}/a"].Port, gateway.Server.GatewayHttpsEndpoints[$"{Infra}/b"].Port, gateway.Server.HttpsEndpoint!.Port);

        // Each Gateway's address: its certificate, its route, HTTP/2 by ALPN.
        var a = await HttpsGetAsync(portA, "a.example", "a.example");
        Assert.Equal((HttpStatusCode.OK, "infra-backend-v1", certA.Thumbprint, HttpVersion.Version20), (a.Status, a.Backend, a.Certificate?.Thumbprint, a.Version));
        var b = await HttpsGetAsync(portB, "b.example", "b.example");
        Assert.Equal((HttpStatusCode.OK, "infra-backend-v2", certB.Thumbprint), (b.Status, b.Backend, b.Certificate?.Thumbprint));

        // The other Gateway's name: no certificate for it on this address, the handshake is refused.
        Assert.Null(await HandshakeAsync(portA, "b.example"));
        Assert.Null(await HandshakeAsync(portB, "a.example"));

        // Its own SNI but the other Gateway's Host (HTTP/1.1 over a raw TLS stream): only its own routes are served there.
        Assert.StartsWith("HTTP/1.1 404", await RawHttpsGetAsync(portA, "a.example", "b.example"), StringComparison.Ordinal);
        Assert.StartsWith("HTTP/1.1 200", await RawHttpsGetAsync(portA, "a.example", "a.example"), StringComparison.Ordinal);

        // --https still serves every Gateway together, each name with its certificate.
        var sharedA = await HttpsGetAsync(shared, "a.example", "a.example");
        var sharedB = await HttpsGetAsync(shared, "b.example", "b.example");
        Assert.Equal(("infra-backend-v1", certA.Thumbprint), (sharedA.Backend, sharedA.Certificate?.Thumbprint));
        Assert.Equal(("infra-backend-v2", certB.Thumbprint), (sharedB.Backend, sharedB.Certificate?.Thumbprint));

        // A Secret rotated in the file is served on the Gateway's own address from the next handshake.
        var (rotated, rotatedSecret) = GatewayLoopback.TlsSecret(Infra, "cert-a", "a.example");
        await gateway.UpdateAsync(backends + yaml.Replace(secretA, rotatedSecret, StringComparison.Ordinal));
        Assert.Equal(rotated.Thumbprint, (await HandshakeAsync(portA, "a.example"))?.Thumbprint);
    }

    [Fact]
    public async Task GatewaysOwnAddresses_ShareTheConnectionLimit_OnePastItIsClosedOnAccept_BeforeItsTlsHandshake()
    {
        var (yaml, certA, _, _) = TwoHttpsGateways();
        yaml += GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}", name: "c") + Route("route-c", "c", "infra-backend-v3");
        await using var gateway = new GatewayLoopback();
        await gateway.StartAsync(await gateway.ConformanceBackendsAsync() + yaml, new GatewayOptions
        {
            MaxConnections = 2,
            GatewayHttp = new Dictionary<string, IPEndPoint> { [$"{Infra}/c"] = new(IPAddress.Loopback, 0) },
            GatewayHttps = new Dictionary<string, IPEndPoint> { [$"{Infra}/a"] = new(IPAddress.Loopback, 0) },
        });
        var (httpC, httpsA, shared) = (gateway.Server.GatewayHttpEndpoints[$"{Infra}/c"].Port, gateway.Server.GatewayHttpsEndpoints[$"{Infra}/a"].Port, gateway.Server.HttpEndpoint!.Port);

        // One held on the shared address, one on Gateway c's own: the limit is reached across addresses.
        using var held = new System.Net.Sockets.TcpClient();
        await held.ConnectAsync(IPAddress.Loopback, shared);
        using var own = new System.Net.Sockets.TcpClient();
        await own.ConnectAsync(IPAddress.Loopback, httpC);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (gateway.Metrics.ConnectionsOpen < 2)
        {
            Assert.True(DateTime.UtcNow < deadline, $"{gateway.Metrics.ConnectionsOpen} connections open");
            await Task.Delay(20);
        }

        // A third, on Gateway a's own TLS address, is closed before the handshake (no certificate served) and counted.
        Assert.Null(await HandshakeAsync(httpsA, "a.example"));
        Assert.Equal(1, gateway.Metrics.ConnectionsRefusedCount);

        // Gateway c's held connection still works; once it closes, a's address takes a new one.
        await own.GetStream().WriteAsync("GET / HTTP/1.1\r\nHost: c.example\r\nConnection: close\r\n\r\n"u8.ToArray());
        using (var reader = new StreamReader(own.GetStream(), System.Text.Encoding.ASCII))
        {
            Assert.StartsWith("HTTP/1.1 200", await reader.ReadLineAsync() ?? "", StringComparison.Ordinal);
        }

        own.Dispose();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (gateway.Metrics.ConnectionsOpen > 1)
        {
            Assert.True(DateTime.UtcNow < deadline, $"{gateway.Metrics.ConnectionsOpen} connections open after one closed");
            await Task.Delay(20);
        }

        Assert.Equal(certA.Thumbprint, (await HandshakeAsync(httpsA, "a.example"))?.Thumbprint);
        Assert.Contains("weft_gateway_client_connections_refused_total 1", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task Routes_ShowWhatEachGatewaysOwnAddressServes_AndWarnAboutAGatewayThatIsNotThere()
    {
        var (yaml, _, _, _) = TwoHttpsGateways();
        yaml += GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}", name: "c") + Route("route-c", "c", "infra-backend-v3", "/c");
        await using var gateway = new GatewayLoopback();
        await gateway.StartAsync(await gateway.ConformanceBackendsAsync() + yaml, new GatewayOptions
        {
            GatewayHttp = new Dictionary<string, IPEndPoint> { [$"{Infra}/c"] = new(IPAddress.Loopback, 0), [$"{Infra}/typo"] = new(IPAddress.Loopback, 0) },
            GatewayHttps = new Dictionary<string, IPEndPoint> { [$"{Infra}/a"] = new(IPAddress.Loopback, 0) },
        });
        var admin = $"127.0.0.1:{gateway.Server.AdminEndpoint!.Port}";
        var (httpC, httpTypo, httpsA) = (gateway.Server.GatewayHttpEndpoints[$"{Infra}/c"], gateway.Server.GatewayHttpEndpoints[$"{Infra}/typo"], gateway.Server.GatewayHttpsEndpoints[$"{Infra}/a"]);

        using var stdout = new StringWriter();
        Assert.Equal(0, await WeftCli.RunAsync(["routes", "--admin", admin], stdout, new StringWriter()));
        var table = stdout.ToString().Split('\n');

        // The shared table first (both HTTPS routes and the HTTP one), then each Gateway's own address with its routes only.
        Assert.StartsWith("LISTENER", table[0], StringComparison.Ordinal);
        var gatewayA = Array.IndexOf(table, $"Gateway {Infra}/a on https://{httpsA}:");
        var gatewayC = Array.IndexOf(table, $"Gateway {Infra}/c on http://{httpC}:");
        var typo = Array.IndexOf(table, $"Gateway {Infra}/typo on http://{httpTypo} (no such Gateway of class weft: 404):");
        Assert.True(gatewayA > 3 && gatewayC > gatewayA && typo > gatewayC, string.Join('\n', table));
        Assert.Equal(3, table[..gatewayA].Count(l => l.StartsWith("http", StringComparison.Ordinal))); // route-a, route-b, route-c
        Assert.Matches(@"^https\s+a\.example\s+Prefix /\s+-\s+HTTPRoute gateway-conformance-infra/route-a\s", table[gatewayA + 2]);
        Assert.Equal("", table[gatewayA + 3]);
        Assert.Matches(@"^http\s+\S+\s+Prefix /c\s+-\s+HTTPRoute gateway-conformance-infra/route-c\s", table[gatewayC + 2]);
        Assert.StartsWith("LISTENER", table[typo + 1], StringComparison.Ordinal);
        Assert.Contains($"warning: Gateway {Infra}/typo has an address of its own (--gateway-http/--gateway-https) but is not a Gateway", stdout.ToString());

        // The JSON says the same, and the typo's address answers 404.
        using var json = JsonDocument.Parse(await gateway.AdminAsync("/routes?format=json"));
        var gateways = json.RootElement.GetProperty("gateways").EnumerateArray().ToList();
        Assert.Equal([$"{Infra}/a", $"{Infra}/c", $"{Infra}/typo"], gateways.Select(g => g.GetProperty("gateway").GetString()));
        Assert.Equal(httpsA.ToString(), gateways[0].GetProperty("https").GetString());
        Assert.Equal(JsonValueKind.Null, gateways[0].GetProperty("http").ValueKind);
        Assert.False(gateways[2].GetProperty("known").GetBoolean());
        Assert.Equal(HttpStatusCode.NotFound, await gateway.StatusAsync("example.com", "/c", gateway: $"{Infra}/typo"));
        Assert.Equal("infra-backend-v3", (await gateway.EchoAsync("example.com", "/c", gateway: $"{Infra}/c")).Backend);
    }

    [Fact]
    public void StatusAddress_OfAGatewayWithAnAddressOfItsOwn_IsTheFlag_ElseItsService_ElseTheIpItIsBoundTo_NeverWildcard()
    {
        var options = new GatewayOptions
        {
            GatewayHttp = new Dictionary<string, IPEndPoint>
            {
                ["ns/bound"] = IPEndPoint.Parse("127.0.0.2:8081"),
                ["ns/wildcard"] = IPEndPoint.Parse("0.0.0.0:8082"),
                ["ns/given"] = IPEndPoint.Parse("0.0.0.0:8083"),
                ["ns/published"] = IPEndPoint.Parse("[::]:8084"),
            },
            GatewayHttps = new Dictionary<string, IPEndPoint>
            {
                ["ns/bound"] = IPEndPoint.Parse("127.0.0.3:8443"),
                ["ns/https-only"] = IPEndPoint.Parse("[::1]:8444"),
            },
        };

        var status = GatewayCommand.GatewayStatus(options, ["ns/given=192.0.2.30", "ns/given=gw.example.com"], ["ns/published=edge/published-lb"]);

        Assert.Equal(["127.0.0.2", "127.0.0.3"], status["ns/bound"].Addresses);
        Assert.Equal(["::1"], status["ns/https-only"].Addresses);
        Assert.Equal(["192.0.2.30", "gw.example.com"], status["ns/given"].Addresses);
        Assert.Equal("edge/published-lb", status["ns/published"].PublishService);
        Assert.False(status.ContainsKey("ns/wildcard")); // 0.0.0.0 says nowhere: the shared address
    }
}
