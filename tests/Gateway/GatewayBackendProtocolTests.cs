using System.Net;
using System.Net.WebSockets;

namespace Weft.Tests.Gateway;

/// <summary>
/// A Service port's appProtocol chooses how the gateway speaks to its endpoints (Gateway API's backend protocol,
/// GEP-1911): <c>kubernetes.io/h2c</c> gets HTTP/2 with prior knowledge, <c>kubernetes.io/ws</c> WebSockets over
/// HTTP/1.1. Real clients, the real gateway and a real Kestrel backend whose second port speaks HTTP/2 only.
/// </summary>
public class GatewayBackendProtocolTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task AnH2cServicePort_IsSpokenToInHttp2_FromHttp11AndHttp2Clients_AndAPortWithoutItGetsHttp11()
    {
        await using var backend = await TrafficBackend.StartAsync("traffic");
        await using var gateway = new GatewayLoopback();
        var (_, secret) = GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example");

        // Both Services end at the backend's HTTP/2-only port; only "h2" says so.
        await gateway.StartAsync(GatewayYaml.AppService("default", "h2", "kubernetes.io/h2c", backend.GrpcPort) + GatewayYaml.Service("default", "plain", backend.GrpcPort) + secret + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: protocols, namespace: default}
            spec:
              ingressClassName: weft
              tls: [{secretName: edge-tls}]
              rules:
              - host: h2.example
                http: {paths: [{pathType: Prefix, path: /, backend: {service: {name: h2, port: {number: 80} } } }]}
              - host: plain.example
                http: {paths: [{pathType: Prefix, path: /, backend: {service: {name: plain, port: {number: 80} } } }]}

            """);
        using var timeout = new CancellationTokenSource(Patience);
        using var http11 = new HttpClient(new SocketsHttpHandler { UseProxy = false });

        using var viaH2c = await http11.SendAsync(new HttpRequestMessage(HttpMethod.Get, gateway.Http("/protocol")) { Headers = { Host = "h2.example" } }, timeout.Token);
        Assert.Equal(HttpStatusCode.OK, viaH2c.StatusCode);
        Assert.Equal(HttpVersion.Version11, viaH2c.Version);
        Assert.Equal("traffic HTTP/2", await viaH2c.Content.ReadAsStringAsync(timeout.Token));

        // The same endpoint without the appProtocol gets HTTP/1.1, which Kestrel's HTTP/2-only endpoint refuses with a 400.
        using var viaHttp11 = await http11.SendAsync(new HttpRequestMessage(HttpMethod.Get, gateway.Http("/protocol")) { Headers = { Host = "plain.example" } }, timeout.Token);
        Assert.Equal(HttpStatusCode.BadRequest, viaHttp11.StatusCode);
        Assert.DoesNotContain("traffic", await viaHttp11.Content.ReadAsStringAsync(timeout.Token));

        // An HTTP/2 client at the TLS listener: HTTP/2 on both sides.
        using var http2 = new HttpClient(GatewayStreamingTests.TrustingHandler());
        using var request = new HttpRequestMessage(HttpMethod.Get, $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}/protocol")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Headers = { Host = "h2.example" },
        };
        using var overTls = await http2.SendAsync(request, timeout.Token);
        Assert.Equal(HttpVersion.Version20, overTls.Version);
        Assert.Equal("traffic HTTP/2", await overTls.Content.ReadAsStringAsync(timeout.Token));

        // `weft routes` says which backend is spoken to in h2c.
        var routes = await gateway.AdminAsync("/routes");
        Assert.Contains("1 endpoints, h2c)", routes);
        Assert.Matches("\"h2c\":\\s*true", await gateway.AdminAsync("/routes?format=json"));
    }

    [Fact]
    public async Task AnH2cServicePort_CarriesManyRequestsAtOnce()
    {
        await using var backend = await TrafficBackend.StartAsync("traffic");
        await using var gateway = new GatewayLoopback();
        await gateway.StartAsync(GatewayYaml.AppService("default", "h2", "kubernetes.io/h2c", backend.GrpcPort) + GatewayYaml.DefaultBackendIngress("h2"));
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false, MaxConnectionsPerServer = 400 });

        // More requests held at once than one HTTP/2 connection to the backend may carry (Kestrel allows 100 streams):
        // the gateway opens more connections rather than queue them, so all are held, then all answered.
        var held = Enumerable.Range(0, 150).Select(_ => client.GetStringAsync(gateway.Http("/hold"), timeout.Token)).ToList();
        var until = DateTime.UtcNow.AddSeconds(20);
        while (backend.Held < held.Count && DateTime.UtcNow < until)
        {
            await Task.Delay(50, timeout.Token);
        }

        Assert.True(backend.Held == held.Count, $"the backend holds {backend.Held} of {held.Count} requests: the rest wait behind one connection's streams");

        backend.Release();
        var answers = await Task.WhenAll(held);
        Assert.All(answers, answer => Assert.Equal("traffic held", answer));
    }

    /// <summary>The upstream backend-protocol manifests: Gateway same-namespace with an HTTP listener, and HTTPRoute <paramref name="route"/> to infra-backend-v1, whose port has <paramref name="appProtocol"/> and ends at <paramref name="port"/>.</summary>
    private static async Task<GatewayLoopback> ConformanceAsync(string route, string appProtocol, int port)
    {
        var gateway = new GatewayLoopback();
        await gateway.StartAsync(GatewayYaml.Namespace("gateway-conformance-infra")
            + GatewayYaml.AppService("gateway-conformance-infra", "infra-backend-v1", appProtocol, port)
            + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}")
            + GatewayYaml.HttpRoute(route, "- backendRefs: [{name: infra-backend-v1, port: 80}]"));
        return gateway;
    }

    /// <summary>gateway-api conformance/tests/httproute-backend-protocol-h2c.go, with the suite's names: an h2c request to the Gateway reaches an h2c backend.</summary>
    [Fact]
    public async Task HTTPRouteBackendProtocolH2C()
    {
        await using var backend = await TrafficBackend.StartAsync("infra-backend-v1");
        await using var gateway = await ConformanceAsync("backend-protocol-h2c", "kubernetes.io/h2c", backend.GrpcPort);
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false });

        foreach (var (path, expected) in new[] { ("/", "infra-backend-v1"), ("/protocol", "infra-backend-v1 HTTP/2") })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, gateway.Http(path))
            {
                Version = HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            using var response = await client.SendAsync(request, timeout.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(HttpVersion.Version20, response.Version);
            Assert.Equal(expected, await response.Content.ReadAsStringAsync(timeout.Token));
        }
    }

    /// <summary>gateway-api conformance/tests/httproute-backend-protocol-websocket.go, with the suite's names.</summary>
    [Fact]
    public async Task HTTPRouteBackendProtocolWebSocket()
    {
        await using var backend = await TrafficBackend.StartAsync("infra-backend-v1");
        await using var gateway = await ConformanceAsync("backend-protocol-ws", "kubernetes.io/ws", backend.Port);
        using var timeout = new CancellationTokenSource(Patience);

        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/ws"), timeout.Token);

        Assert.Equal("infra-backend-v1: Websocket Support!", await GatewayStreamingTests.ExchangeAsync(socket, "Websocket Support!", timeout.Token));
        byte[] binary = [1, 2, 3, 4, 5, 6, 7];
        await socket.SendAsync(binary, WebSocketMessageType.Binary, endOfMessage: true, timeout.Token);
        var buffer = new byte[64];
        var received = await socket.ReceiveAsync(buffer, timeout.Token);
        Assert.Equal(WebSocketMessageType.Binary, received.MessageType);
        Assert.Equal(binary, buffer[..received.Count]);
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
    }
}

/// <summary>Which appProtocol values make a backend h2c, from the inventory file as the gateway reads it.</summary>
public class BackendProtocolCompilerTests
{
    [Theory]
    [InlineData("kubernetes.io/h2c", true)]
    [InlineData("h2c", true)]
    [InlineData("http2", true)] // Istio's names for an HTTP/2 port
    [InlineData("grpc", true)]
    [InlineData("kubernetes.io/ws", false)]
    [InlineData("http", false)]
    [InlineData("kubernetes.io/h2c-typo", false)]
    [InlineData(null, false)]
    public void TheServicePortsAppProtocol_DecidesIfTheBackendIsH2c(string? appProtocol, bool h2c)
    {
        var table = GatewayYaml.Compile(GatewayYaml.AppService("default", "svc", appProtocol, 8080) + GatewayYaml.DefaultBackendIngress("svc"));

        var backend = GatewayYaml.Match(table, "any.example", "/")!.Action.Backends.Single();
        Assert.Equal("svc", backend.ServiceName);
        Assert.Equal(h2c, backend.H2c);
    }
}
