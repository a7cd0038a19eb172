using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>Our HBONE framing against an independent HTTP/2 implementation: Debian's python3-h2.</summary>
public class HboneInteropTests
{
    [Fact]
    public async Task PythonH2Client_ConnectStreamsToOurServer_GetsEveryByteEchoed()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;

        // 20 streams, the first carrying 12 MiB: three times our stream window, so it only completes if
        // our WINDOW_UPDATEs reach h2 and h2's small (64 KiB) windows are honoured on the way back.
        await using var peer = PythonH2Peer.Start("client", port.ToString(), "20", "12");
        using Socket accepted = await listener.AcceptAsync().WaitAsync(Patience);
        var requests = new ConcurrentBag<HboneRequest>();
        Task server = HboneServer.RunConnectionAsync(new NetworkStream(accepted, ownsSocket: false), async request =>
        {
            requests.Add(request);
            await EchoHandler(request);
        }, QuietSettings, CancellationToken.None);

        await peer.ReadLineAsync("OK", TimeSpan.FromSeconds(90));
        Assert.Equal(0, await peer.WaitForExitAsync(Patience));
        await server.WaitAsync(Patience); // the peer's GOAWAY and close end the connection quietly

        Assert.Equal(20, requests.Count);
        Assert.Contains(requests, r => r.Authority == "10.0.0.1:80" && r.Headers.Contains(new("forwarded", "for=\"10.244.1.2:40000\"")));
    }

    private static async Task<(PythonH2Peer Peer, HboneClientConnection Client)> ConnectToPythonServerAsync(string mode)
    {
        PythonH2Peer peer = PythonH2Peer.Start("server", mode);
        string portLine = await peer.ReadLineAsync("PORT");
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, int.Parse(portLine.Split(' ')[1])));
        HboneClientConnection client = await HboneClientConnection.StartAsync(new NetworkStream(socket, ownsSocket: true), QuietSettings, CancellationToken.None);
        return (peer, client);
    }

    [Fact]
    public async Task OurClient_ToPythonH2EchoServer_ExchangesDataOnConcurrentStreams()
    {
        var (peer, client) = await ConnectToPythonServerAsync("echo");
        await using (peer)
        await using (client)
        {
            HboneStream[] streams = await Task.WhenAll(Enumerable.Range(0, 5).Select(i =>
                client.ConnectAsync($"10.244.2.7:{8080 + i}", [new("forwarded", $"for=\"10.244.1.2:{50000 + i}\""), new("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], CancellationToken.None)
                    .WaitAsync(Patience)));

            await Task.WhenAll(streams.Select(async (stream, i) =>
            {
                // The first stream moves 8 MiB against h2's default 64 KiB windows: our sender must wait for its WINDOW_UPDATEs.
                byte[] payload = RandomNumberGenerator.GetBytes(i == 0 ? 8 * 1024 * 1024 : 10_000 + i);
                Task<byte[]> echoed = ReadToEndAsync(stream.Input);
                await stream.Output.WriteAsync(payload);
                await stream.Output.CompleteAsync();
                Assert.Equal(payload, await echoed.WaitAsync(TimeSpan.FromSeconds(60)));
                await stream.DisposeAsync();
            }));

            var request = JsonSerializer.Deserialize<Dictionary<string, string>>((await peer.ReadLineAsync("REQUEST"))["REQUEST ".Length..])!;
            Assert.Equal("CONNECT", request[":method"]);
            Assert.Equal("10.244.2.7:8080", request[":authority"]);
            Assert.Equal("for=\"10.244.1.2:50000\"", request["forwarded"]);
            Assert.False(request.ContainsKey(":path"));
        }
    }

    [Fact]
    public async Task OurClient_FirstDataRightBehindTheRequest_PythonH2EchoServerEchoesItOnceInOrder()
    {
        var (peer, client) = await ConnectToPythonServerAsync("echo");
        await using (peer)
        await using (client)
        {
            byte[] first = RandomNumberGenerator.GetBytes(3000);
            HboneStream stream = await client.ConnectAsync("10.244.2.7:8080", [], CancellationToken.None, first).WaitAsync(Patience);
            Task<byte[]> echoed = ReadToEndAsync(stream.Input);
            byte[] rest = RandomNumberGenerator.GetBytes(5000);
            await stream.Output.WriteAsync(rest);
            await stream.Output.CompleteAsync();

            byte[] expected = [.. first, .. rest];
            Assert.Equal(expected, await echoed.WaitAsync(Patience));
            await stream.DisposeAsync();
        }
    }

    [Fact]
    public async Task OurClient_PythonH2ServerAnswers403_SurfacesTheStatus()
    {
        var (peer, client) = await ConnectToPythonServerAsync("reject403");
        await using (peer)
        await using (client)
        {
            var error = await Assert.ThrowsAsync<HboneException>(() =>
                client.ConnectAsync("10.244.2.7:8080", [], CancellationToken.None).WaitAsync(Patience));
            Assert.Equal(403, error.StatusCode);
            Assert.True(client.CanOpenStream);
            Assert.Equal(0, await HboneLoopbackTests.WaitForAsync(() => client.ActiveStreams, 0));
        }
    }

    [Fact]
    public async Task OurClient_PythonH2ServerSendsGoAway_RefusesRetryablyAndCloses()
    {
        var (peer, client) = await ConnectToPythonServerAsync("goaway");
        await using (peer)
        await using (client)
        {
            var error = await Assert.ThrowsAsync<HboneException>(() =>
                client.ConnectAsync("10.244.2.7:8080", [], CancellationToken.None).WaitAsync(Patience));
            Assert.True(error.IsRetryable);
            Assert.Equal(Http2ErrorCode.NoError, error.ErrorCode);
            Assert.False(client.CanOpenStream);
            await client.Completion.WaitAsync(Patience); // drained after GOAWAY: closed, not failed
        }
    }
}
