using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using Grpc.Core;
using Weft.Ca;

namespace Weft.Tests.Ca;

/// <summary>Requests a peer holds open (headers sent, message never finished) count against the CA's concurrency limit.</summary>
public class CaConcurrencyLimitTests
{
    private static readonly TestPod[] Pods = [new("web-1", "demo", "web", "node1", "10.244.1.2")];

    [Fact]
    public async Task RequestsPastTheConcurrencyLimit_GetResourceExhausted_AndAreCounted_UntilAHeldOneEnds()
    {
        await using var ca = await CaTestServer.StartAsync(Pods, o => o with { MaxConcurrentRequests = 2 });
        using var node1 = ca.NodeCertificate("node1");
        using var http = new HttpClient(CaClient.CreateHandler(ca.Root, node1));
        using var release = new CancellationTokenSource();
        var held = Enumerable.Range(0, 2).Select(_ => HoldRequestAsync(http, ca.Server.Endpoint.Port, release.Token)).ToList();
        await CaTestPki.WaitUntilAsync(() => ca.Server.Metrics.InFlight == 2);

        using var client = ca.Client(node1);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var id = CaTestPki.Id("demo", "web");
        var failure = await Assert.ThrowsAsync<RpcException>(() => client.CreateAsync(id, CaTestPki.Csr(key, id)));

        Assert.Equal(StatusCode.ResourceExhausted, failure.StatusCode);
        Assert.Equal(1, ca.Server.Metrics.RefusedCount(RefusalReason.TooManyRequests));
        Assert.Equal(0, ca.Server.Metrics.IssuedCount);

        release.Cancel();
        foreach (var request in held)
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => request);
        }
        await CaTestPki.WaitUntilAsync(() => ca.Server.Metrics.InFlight == 0);
        var response = await client.CreateAsync(id, CaTestPki.Csr(key, id));
        Assert.NotEmpty(response.CertChain);
        Assert.Equal(1, ca.Server.Metrics.IssuedCount);
    }

    /// <summary>A gRPC call whose 5-byte message prefix promises 100 bytes that never come.</summary>
    private static async Task HoldRequestAsync(HttpClient http, int port, CancellationToken release)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, $"https://localhost:{port}/istio.v1.auth.IstioCertificateService/CreateCertificate")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new StalledGrpcMessage(),
        };
        request.Headers.TE.Add(new TransferCodingWithQualityHeaderValue("trailers"));
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, release);
    }

    private sealed class StalledGrpcMessage : HttpContent
    {
        public StalledGrpcMessage()
        {
            Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        }

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) =>
            SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
        {
            await stream.WriteAsync(new byte[] { 0, 0, 0, 0, 100 }, cancellationToken);
            await stream.FlushAsync(cancellationToken);
            await Task.Delay(Timeout.Infinite, cancellationToken);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
