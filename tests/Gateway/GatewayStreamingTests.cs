using System.Diagnostics;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using Grpc.Core;
using Grpc.Net.Client;

namespace Weft.Tests.Gateway;

/// <summary>
/// Long-lived traffic through the gateway with real clients and backends on loopback: WebSockets (HTTP/1.1
/// Upgrade, and RFC 8441 extended CONNECT over HTTP/2), gRPC (HTTP/2 end to end, trailers, server streaming),
/// and request and response bodies that stream rather than being buffered.
/// </summary>
public class GatewayStreamingTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>Services "traffic" (HTTP/1.1 port) and "grpc" (h2c port), Ingress rules for every host, and a default certificate.</summary>
    internal static string Yaml(TrafficBackend backend, string secretYaml, int? trafficPort = null) =>
        GatewayYaml.Service("default", "traffic", trafficPort ?? backend.Port) + GatewayYaml.Service("default", "grpc", backend.GrpcPort) + secretYaml + """
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: traffic, namespace: default}
        spec:
          ingressClassName: weft
          tls: [{secretName: edge-tls}]
          rules:
          - http:
              paths:
              - {pathType: Prefix, path: /weft.test.Echo, backend: {service: {name: grpc, port: {number: 80} } } }
              - {pathType: Prefix, path: /, backend: {service: {name: traffic, port: {number: 80} } } }

        """;

    private static async Task<(GatewayLoopback Gateway, TrafficBackend Backend)> StartAsync(Weft.Gateway.GatewayOptions? options = null)
    {
        var gateway = new GatewayLoopback();
        var backend = await TrafficBackend.StartAsync("traffic");
        await gateway.StartAsync(Yaml(backend, GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example").SecretYaml), options);
        return (gateway, backend);
    }

    internal static SocketsHttpHandler TrustingHandler() => new()
    {
        UseProxy = false,
        SslOptions = new System.Net.Security.SslClientAuthenticationOptions
        {
            TargetHost = "edge.example",
            RemoteCertificateValidationCallback = (_, _, _, _) => true,
        },
    };

    internal static async Task<string> ExchangeAsync(ClientWebSocket socket, string message, CancellationToken cancellationToken)
    {
        await socket.SendAsync(Encoding.UTF8.GetBytes(message), WebSocketMessageType.Text, endOfMessage: true, cancellationToken);
        var buffer = new byte[16 * 1024];
        var received = await socket.ReceiveAsync(buffer, cancellationToken);
        Assert.True(received.EndOfMessage);
        return Encoding.UTF8.GetString(buffer, 0, received.Count);
    }

    [Fact]
    public async Task WebSocket_UpgradesOverHttp11_AndEchoesBothWays_ThenClosesCleanly()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);

        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/ws"), timeout.Token);

        Assert.Equal("traffic: one", await ExchangeAsync(socket, "one", timeout.Token));
        Assert.Equal("traffic: two", await ExchangeAsync(socket, "two", timeout.Token));
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
        Assert.Equal(WebSocketCloseStatus.NormalClosure, socket.CloseStatus);
        Assert.Matches(@"istio_requests_total\{[^}]*destination_service_name=""traffic""[^}]*response_code=""101""[^}]*\} 1", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task WebSocket_OverHttp2ExtendedConnect_OnTheTlsListener_Echoes()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using var invoker = new HttpMessageInvoker(TrustingHandler());

        using var socket = new ClientWebSocket();
        socket.Options.HttpVersion = HttpVersion.Version20;
        socket.Options.HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact;
        socket.Options.CollectHttpResponseDetails = true;
        await socket.ConnectAsync(new Uri($"wss://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}/ws"), invoker, timeout.Token);

        Assert.Equal(HttpStatusCode.OK, socket.HttpStatusCode); // RFC 8441: 200 to the CONNECT, not 101
        Assert.Equal("traffic: over h2", await ExchangeAsync(socket, "over h2", timeout.Token));
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", timeout.Token);
    }

    [Fact]
    public async Task Grpc_OverThePlainListener_InH2cWithPriorKnowledge_BesideHttp11OnTheSamePort()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;

        // Grpc.Net.Client speaks HTTP/2 with prior knowledge to an http:// address.
        using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}");
        var invoker = channel.CreateCallInvoker();
        using var unary = invoker.AsyncUnaryCall(TrafficBackend.Say, null, new CallOptions(deadline: DateTime.UtcNow + Patience), "gateway");
        Assert.Equal("hello gateway via http", await unary.ResponseAsync);
        Assert.Equal("said", unary.GetTrailers().GetValue("x-echo-trailer"));

        // HTTP/1.1 on the same port, a request line starting as the preface does ("P") included.
        using var http11 = new HttpClient(new SocketsHttpHandler { UseProxy = false });
        using var put = await http11.PutAsync(gateway.Http("/protocol"), new StringContent("x"));
        Assert.Equal("traffic HTTP/1.1", await put.Content.ReadAsStringAsync());
        Assert.Matches(@"istio_requests_total\{[^}]*destination_service_name=""grpc""[^}]*request_protocol=""grpc""[^}]*response_code=""200""[^}]*\} 1", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task Grpc_UnaryAndServerStreaming_PassThroughOverHttp2_WithTrailers()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var channel = GrpcChannel.ForAddress($"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}", new GrpcChannelOptions { HttpHandler = TrustingHandler() });
        var invoker = channel.CreateCallInvoker();

        using var unary = invoker.AsyncUnaryCall(TrafficBackend.Say, null, new CallOptions(deadline: DateTime.UtcNow + Patience), "gateway");
        Assert.Equal("hello gateway via https", await unary.ResponseAsync);
        Assert.Equal("said", unary.GetTrailers().GetValue("x-echo-trailer"));

        using var stream = invoker.AsyncServerStreamingCall(TrafficBackend.Count, null, new CallOptions(deadline: DateTime.UtcNow + Patience), "5");
        var received = new List<string>();
        await foreach (var message in stream.ResponseStream.ReadAllAsync())
        {
            received.Add(message);
        }

        Assert.Equal(["1", "2", "3", "4", "5"], received);
        Assert.Equal(StatusCode.OK, stream.GetStatus().StatusCode);
        Assert.Equal("counted", stream.GetTrailers().GetValue("x-echo-trailer"));
        Assert.Matches(@"istio_requests_total\{[^}]*destination_service_name=""grpc""[^}]*request_protocol=""grpc""[^}]*response_code=""200""[^}]*\} 2", await gateway.AdminAsync("/metrics"));
    }

    [Fact]
    public async Task Grpc_UnknownMethod_KeepsTheBackendsGrpcStatus()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var channel = GrpcChannel.ForAddress($"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}", new GrpcChannelOptions { HttpHandler = TrustingHandler() });
        var missing = new Method<string, string>(MethodType.Unary, TrafficBackend.GrpcService, "Missing", TrafficBackend.Text, TrafficBackend.Text);

        var error = await Assert.ThrowsAsync<RpcException>(() => channel.CreateCallInvoker().AsyncUnaryCall(missing, null, new CallOptions(deadline: DateTime.UtcNow + Patience), "x").ResponseAsync);

        Assert.Equal(StatusCode.Unimplemented, error.StatusCode); // the backend's trailers-only answer came through
    }

    [Theory]
    [InlineData("1.1")]
    [InlineData("2.0")]
    public async Task ResponseBody_StreamsPartByPart_NotBufferedToTheEnd(string version)
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(TrustingHandler());
        var uri = version == "2.0" ? $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}/stream" : $"http://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/stream";
        using var request = new HttpRequestMessage(HttpMethod.Get, uri) { Version = Version.Parse(version), VersionPolicy = HttpVersionPolicy.RequestVersionExact };

        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(timeout.Token));

        // Each part arrives before the backend is allowed to write the next one.
        Assert.Equal("part 0", await reader.ReadLineAsync(timeout.Token));
        backend.StreamParts.Release();
        Assert.Equal("part 1", await reader.ReadLineAsync(timeout.Token));
        backend.StreamParts.Release();
        Assert.Equal("part 2", await reader.ReadLineAsync(timeout.Token));
        Assert.Null(await reader.ReadLineAsync(timeout.Token));
        Assert.Equal(Version.Parse(version), response.Version);
    }

    [Theory]
    [InlineData("1.1")]
    [InlineData("2.0")]
    public async Task RequestBody_StreamsToTheBackend_AsTheClientSendsIt(string version)
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        using var timeout = new CancellationTokenSource(Patience);
        using var client = new HttpClient(TrustingHandler());
        var uri = version == "2.0" ? $"https://127.0.0.1:{gateway.Server.HttpsEndpoint!.Port}/upload" : $"http://127.0.0.1:{gateway.Server.HttpEndpoint!.Port}/upload";
        // Parts of 64 KiB: YARP flushes what it forwards when the outgoing connection's buffer fills (and per
        // message for gRPC), so a few bytes may wait for more; a body is never held back until it is complete.
        var part = new string('x', 64 * 1024);
        var body = new PartByPartContent([";first" + part, ";second" + part, ";third" + part], async sent =>
        {
            // The parts already sent have reached the backend (their leading ';' at least) before the client sends the next one.
            while (string.Concat(backend.Uploaded).Count(c => c == ';') < sent && !timeout.IsCancellationRequested)
            {
                await Task.Delay(20);
            }
        });
        using var request = new HttpRequestMessage(HttpMethod.Post, uri) { Version = Version.Parse(version), VersionPolicy = HttpVersionPolicy.RequestVersionExact, Content = body };

        using var response = await client.SendAsync(request, timeout.Token);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal($"traffic read {(3 * part.Length) + 19}", await response.Content.ReadAsStringAsync(timeout.Token));
        Assert.False(timeout.IsCancellationRequested, "a part did not reach the backend before the next was sent");
        Assert.Equal(";first" + part + ";second" + part + ";third" + part, string.Concat(backend.Uploaded));
    }

    [Fact]
    public async Task Curl_Http2_StreamsAResponse_ThroughTheTlsListener()
    {
        var (gateway, backend) = await StartAsync();
        await using var _ = gateway;
        await using var __ = backend;
        backend.StreamParts.Release(2);
        var curl = Process.Start(new ProcessStartInfo("curl", ["-sk", "-N", "--http2", "--max-time", "60", "-w", "\\n%{http_version}", "--resolve", $"edge.example:{gateway.Server.HttpsEndpoint!.Port}:127.0.0.1", $"https://edge.example:{gateway.Server.HttpsEndpoint.Port}/stream"])
        {
            RedirectStandardOutput = true,
        })!;

        var output = await curl.StandardOutput.ReadToEndAsync();
        await curl.WaitForExitAsync();

        Assert.Equal(0, curl.ExitCode);
        Assert.Equal("part 0\npart 1\npart 2\n\n2", output);
    }

    /// <summary>A request body sent in parts, with a wait between them.</summary>
    private sealed class PartByPartContent(string[] parts, Func<int, Task> betweenParts) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            for (var i = 0; i < parts.Length; i++)
            {
                await stream.WriteAsync(Encoding.UTF8.GetBytes(parts[i]));
                await stream.FlushAsync();
                if (i < parts.Length - 1)
                {
                    await betweenParts(i + 1);
                }
            }
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
