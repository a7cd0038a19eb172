using System.Net;
using System.Net.WebSockets;
using Xunit.Abstractions;

namespace Weft.Tests.Gateway;

/// <summary>
/// Issue 12's hot change: routes, endpoints and a certificate change through the inventory file while 1,000
/// requests are in flight and 50 WebSockets are open, and none of them fails.
/// </summary>
public class GatewayHotChangeTests(ITestOutputHelper output)
{
    private const int RequestsInFlight = 1000;
    private const int WebSockets = 50;

    private static string NewRoute => """
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: added, namespace: default}
        spec:
          ingressClassName: weft
          rules:
          - host: added.example
            http:
              paths:
              - {pathType: Prefix, path: /, backend: {service: {name: traffic, port: {number: 80} } } }

        """;

    [Fact]
    public async Task RoutesEndpointsAndCertificateChange_With1000RequestsInFlightAnd50WebSocketsOpen_NothingFails()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        var gateway = new GatewayLoopback();
        await using var _ = gateway;
        await using var before = await TrafficBackend.StartAsync("before");
        await using var after = await TrafficBackend.StartAsync("after");
        var (_, firstSecret) = GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example");
        var (rotated, rotatedSecret) = GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example");
        await gateway.StartAsync(GatewayStreamingTests.Yaml(before, firstSecret));
        var http = $"http://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}";
        var https = $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}";

        var plainHandler = new SocketsHttpHandler { UseProxy = false };
        using var plain = new HttpClient(plainHandler) { Timeout = Timeout.InfiniteTimeSpan };
        var h2Handler = GatewayStreamingTests.TrustingHandler();
        h2Handler.EnableMultipleHttp2Connections = true;
        using var h2 = new HttpClient(h2Handler) { Timeout = Timeout.InfiniteTimeSpan };
        using var wsInvoker = new HttpMessageInvoker(GatewayStreamingTests.TrustingHandler());

        // Half over plain HTTP/1.1, half as HTTP/2 streams over TLS; the backend holds them all until released.
        var requests = Enumerable.Range(0, RequestsInFlight).Select(i => HoldAsync(i % 2 == 0 ? plain : h2, i % 2 == 0 ? http : https, i % 2 == 0 ? HttpVersion.Version11 : HttpVersion.Version20, timeout.Token)).ToList();
        await WaitForAsync(() => before.Held == RequestsInFlight, "1,000 requests held at the backend", timeout.Token);

        var sockets = new List<ClientWebSocket>();
        for (var i = 0; i < WebSockets; i++)
        {
            var socket = new ClientWebSocket();
            if (i % 2 == 0)
            {
                await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint.Port}/ws"), timeout.Token);
            }
            else
            {
                socket.Options.HttpVersion = HttpVersion.Version20;
                socket.Options.HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact;
                await socket.ConnectAsync(new Uri($"wss://127.0.0.1:{gateway.Server.HttpsEndpoint.Port}/ws"), wsInvoker, timeout.Token);
            }

            sockets.Add(socket);
            Assert.Equal($"before: hi {i}", await GatewayStreamingTests.ExchangeAsync(socket, $"hi {i}", timeout.Token));
        }

        // A route is added, the Service's endpoint moves to another backend, the certificate rotates: one file write each.
        await gateway.UpdateAsync(GatewayStreamingTests.Yaml(before, firstSecret) + NewRoute);
        Assert.Contains("added.example", await gateway.AdminAsync("/routes"));
        await gateway.UpdateAsync(GatewayStreamingTests.Yaml(before, firstSecret, after.Port) + NewRoute);
        await gateway.UpdateAsync(GatewayStreamingTests.Yaml(before, rotatedSecret, after.Port) + NewRoute);

        // New work sees the new state: the moved endpoint, the rotated certificate.
        using var fresh = new HttpClient(new SocketsHttpHandler { UseProxy = false, PooledConnectionLifetime = TimeSpan.Zero });
        Assert.Equal("after", await fresh.GetStringAsync($"{http}/", timeout.Token));
        Assert.Equal(rotated.Thumbprint, (await gateway.HandshakeAsync("edge.example")).Certificate?.Thumbprint);
        using (var newSocket = new ClientWebSocket())
        {
            await newSocket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint.Port}/ws"), timeout.Token);
            Assert.Equal("after: new", await GatewayStreamingTests.ExchangeAsync(newSocket, "new", timeout.Token));
            await newSocket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
        }

        // What was open before the changes is still served by the backend it started on, and completes.
        for (var i = 0; i < sockets.Count; i++)
        {
            Assert.Equal($"before: still {i}", await GatewayStreamingTests.ExchangeAsync(sockets[i], $"still {i}", timeout.Token));
        }

        before.Release();
        var answers = await Task.WhenAll(requests);
        foreach (var socket in sockets)
        {
            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
            Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
            socket.Dispose();
        }

        var failures = answers.Where(a => a != "before held").ToList();
        output.WriteLine($"{answers.Length} requests, {failures.Count} failures; {sockets.Count} WebSockets across 3 changes");
        Assert.Empty(failures);
        Assert.Equal(RequestsInFlight, answers.Length);
    }

    private static async Task<string> HoldAsync(HttpClient client, string baseAddress, Version version, CancellationToken cancellationToken)
    {
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"{baseAddress}/hold") { Version = version, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
            using var response = await client.SendAsync(request, cancellationToken);
            var body = await response.Content.ReadAsStringAsync(cancellationToken);
            return response.StatusCode == HttpStatusCode.OK ? body : $"{(int)response.StatusCode} {body}";
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException or OperationCanceledException)
        {
            return ex.GetType().Name + ": " + ex.Message;
        }
    }

    private static async Task WaitForAsync(Func<bool> condition, string what, CancellationToken cancellationToken)
    {
        while (!condition())
        {
            Assert.False(cancellationToken.IsCancellationRequested, $"not reached: {what}");
            await Task.Delay(50, CancellationToken.None);
        }
    }
}
