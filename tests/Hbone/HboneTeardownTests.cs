using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Proxy;
using Weft.Telemetry;
using Weft.Tests.Proxy;
using Xunit.Abstractions;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// When a tunnel ends, every stream on it ends and the sockets relayed to its streams are closed at
/// once, on both sides: the app's connections (server side) and the pod's captured connections (client
/// side). Streams are relayed exactly as the proxy does (ProxyConnection over loopback sockets); a third
/// are half-closed by the pod, a third by the app (each leaves a relay waiting on a socket the tunnel can
/// no longer serve), and a third carry more than the app reads (the relay is blocked writing to it).
/// </summary>
public class HboneTeardownTests(ITestOutputHelper output)
{
    private const int Streams = 12;
    // Not a speed figure: "at once" as opposed to "never" or "at the next keepalive", with room for a
    // loaded 2-core machine, where a 1 s bound was overrun.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);

    // tcpi_state values (include/net/tcp_states.h).
    private const byte TcpClose = 7;

    public static TheoryData<string> Endings() => new()
    {
        "client-transport-reset", "client-transport-close", "server-transport-reset", "server-transport-close",
        "client-goaway-and-close", "server-goaway-and-close", "keepalive-timeout",
    };

    // Keepalive for the "keepalive-timeout" case: the peer goes silent and the PING goes unanswered.
    private static readonly HboneSettings Keepalive = QuietSettings with
    {
        KeepaliveInterval = TimeSpan.FromMilliseconds(200),
        KeepaliveTimeout = TimeSpan.FromMilliseconds(300),
    };

    [Theory]
    [MemberData(nameof(Endings))]
    public async Task TunnelEnds_EveryRelayedConnectionOnBothSides_IsResetWithinASecond(string ending)
    {
        var (clientTransport, serverTransport) = await SocketPairAsync();
        bool keepalive = ending == "keepalive-timeout";
        HboneSettings settings = keepalive ? Keepalive : QuietSettings;
        // For the keepalive case the client's side of the wire goes silent: it reads nothing more.
        var clientWire = new SilenceableStream(clientTransport);
        var appEnds = new ConcurrentDictionary<int, Socket>();
        var serverRelays = new ConcurrentBag<Task>();
        using var stop = new CancellationTokenSource();
        Task server = HboneServer.RunConnectionAsync(serverTransport, async request =>
        {
            int index = IPEndPoint.Parse(request.Authority).Port;
            var (appProxy, appEnd) = await SocketPairAsync();
            appEnds[index] = appEnd.Socket;
            HboneStream stream = await request.AcceptAsync();
            using (appProxy)
            {
                Task relay = Relay(appProxy.Socket, stream, socketIsClient: false);
                serverRelays.Add(relay);
                await relay;
            }
        }, settings, stop.Token);
        HboneClientConnection client = await HboneClientConnection.StartAsync(clientWire, settings, CancellationToken.None);

        var podEnds = new Socket[Streams];
        var podProxies = new List<NetworkStream>();
        var clientRelays = new List<Task>();
        for (int i = 0; i < Streams; i++)
        {
            HboneStream stream = await client.ConnectAsync($"10.0.0.1:{i + 1}", [], CancellationToken.None).WaitAsync(Patience);
            var (podEnd, podProxy) = await SocketPairAsync();
            podEnds[i] = podEnd.Socket;
            podProxies.Add(podProxy);
            clientRelays.Add(Relay(podProxy.Socket, stream, socketIsClient: true));
        }
        await WaitUntilAsync(() => appEnds.Count == Streams);

        // Every relay carries a byte each way; then a third of the streams are half-closed by the pod and a
        // third by the app, and the other side sees that end of stream before the tunnel goes.
        for (int i = 0; i < Streams; i++)
        {
            Socket pod = podEnds[i], app = appEnds[i + 1];
            await pod.SendAsync(new byte[] { 1 });
            await ExpectByteAsync(app);
            await app.SendAsync(new byte[] { 2 });
            await ExpectByteAsync(pod);
            if (i % 3 == 1)
            {
                pod.Shutdown(SocketShutdown.Send);
                Assert.Equal(0, await app.ReceiveAsync(new byte[1]).WaitAsync(Patience));
            }
            else if (i % 3 == 2)
            {
                app.Shutdown(SocketShutdown.Send);
                Assert.Equal(0, await pod.ReceiveAsync(new byte[1]).WaitAsync(Patience));
            }
        }

        // The remaining third push more than the app reads (it reads nothing more): their relays end up
        // blocked writing to the app's full socket, or holding the tunnel's window.
        var floods = new List<Task>();
        for (int i = 0; i < Streams; i += 3)
        {
            floods.Add(Flood(podEnds[i]));
        }
        await Task.Delay(300);

        var clock = Stopwatch.StartNew();
        await EndTunnelAsync(ending, client, clientWire, serverTransport);
        // A silent peer is noticed only when a PING goes unanswered: the bound starts after that.
        TimeSpan bound = keepalive ? Bound + settings.KeepaliveInterval + settings.KeepaliveTimeout : Bound;

        // The agent resets what it relayed: the other end of each socket sees RST (TCP state CLOSE).
        var open = new List<string>();
        while (true)
        {
            open.Clear();
            for (int i = 0; i < Streams; i++)
            {
                if (TcpState(podEnds[i]) != TcpClose)
                {
                    open.Add($"pod end {i} ({TcpState(podEnds[i])})");
                }
                if (TcpState(appEnds[i + 1]) != TcpClose)
                {
                    open.Add($"app end {i} ({TcpState(appEnds[i + 1])})");
                }
            }
            if (open.Count == 0 || clock.Elapsed > bound + Bound)
            {
                break;
            }
            await Task.Delay(10);
        }
        TimeSpan closedAfter = clock.Elapsed;
        output.WriteLine($"{ending}: every relayed socket reset after {closedAfter.TotalMilliseconds:0} ms");
        Assert.True(open.Count == 0, $"{ending}: still open after {closedAfter.TotalMilliseconds:0} ms: {string.Join(", ", open)}");
        Assert.True(closedAfter < bound, $"{ending}: relayed sockets closed only after {closedAfter.TotalMilliseconds:0} ms");

        // Every consumer (relay) has ended too, and the server returns.
        await Task.WhenAll(clientRelays.Concat(serverRelays)).WaitAsync(Bound + Bound);
        await Task.WhenAll(floods).WaitAsync(Patience);
        await server.WaitAsync(Patience);
        await client.DisposeAsync();
        foreach (var socket in podEnds.Concat(appEnds.Values))
        {
            socket.Dispose();
        }
        podProxies.ForEach(p => p.Dispose());
    }

    [Fact]
    public async Task TunnelReset_StreamInputsFailAndOutputsStop_WithinASecond()
    {
        var (clientTransport, serverTransport) = await SocketPairAsync();
        var serverInputs = new ConcurrentBag<Task>();
        Task server = HboneServer.RunConnectionAsync(serverTransport, async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            Task reading = ReadToEndAsync(stream.Input);
            serverInputs.Add(reading);
            await reading;
        }, QuietSettings, CancellationToken.None);
        HboneClientConnection client = await HboneClientConnection.StartAsync(clientTransport, QuietSettings, CancellationToken.None);
        var streams = await Task.WhenAll(Enumerable.Range(0, Streams).Select(_ => client.ConnectAsync("10.0.0.1:80", [], CancellationToken.None).WaitAsync(Patience)));
        await WaitUntilAsync(() => serverInputs.Count == Streams);
        var clientInputs = streams.Select(s => ReadToEndAsync(s.Input)).ToArray();

        var clock = Stopwatch.StartNew();
        clientTransport.Socket.LingerState = new LingerOption(true, 0);
        clientTransport.Socket.Close();

        foreach (Task input in serverInputs.Concat(clientInputs))
        {
            var error = await Assert.ThrowsAsync<HboneException>(() => input.WaitAsync(Bound + Bound));
            Assert.NotNull(error.Message);
        }
        Assert.True(clock.Elapsed < Bound, $"stream inputs failed only after {clock.ElapsedMilliseconds} ms");
        Assert.All(streams, s => Assert.True(s.Aborted.IsCancellationRequested, $"stream {s.StreamId} not marked aborted"));
        await server.WaitAsync(Patience);
        await client.DisposeAsync();
    }

    private static async Task Flood(Socket socket)
    {
        try
        {
            await socket.SendAsync(new byte[16 * 1024 * 1024]);
        }
        catch (SocketException)
        {
            // The relay reset it: what the test waits for.
        }
    }

    private static Task Relay(Socket socket, HboneStream stream, bool socketIsClient)
    {
        var connection = new ProxyConnection(new Flow(FlowDirection.Inbound, new IPEndPoint(IPAddress.Loopback, 1), new IPEndPoint(IPAddress.Loopback, 2)));
        var end = new StreamRelayWatchTests.EndOfRelay();
        connection.StartRelay(socket, stream, socketIsClient, end);
        return RelayAndDisposeAsync();

        async Task RelayAndDisposeAsync()
        {
            await using (stream)
            {
                await end.Relay;
            }
        }
    }

    private static async Task EndTunnelAsync(string ending, HboneClientConnection client, SilenceableStream clientWire, NetworkStream serverTransport)
    {
        NetworkStream clientTransport = clientWire.Inner;
        switch (ending)
        {
            case "keepalive-timeout":
                // Both sides' PINGs now go unanswered (the client reads nothing, so it answers nothing).
                clientWire.Silence();
                break;
            case "client-transport-reset":
                clientTransport.Socket.LingerState = new LingerOption(true, 0);
                clientTransport.Socket.Close();
                break;
            case "server-transport-reset":
                serverTransport.Socket.LingerState = new LingerOption(true, 0);
                serverTransport.Socket.Close();
                break;
            case "client-transport-close":
                clientTransport.Socket.Shutdown(SocketShutdown.Both);
                break;
            case "server-transport-close":
                serverTransport.Socket.Shutdown(SocketShutdown.Both);
                break;
            case "client-goaway-and-close":
                // Our client's own close: GOAWAY(NO_ERROR), then the transport closes.
                await client.DisposeAsync();
                break;
            case "server-goaway-and-close":
                // What a server does on an error (RFC 9113 5.4.1): GOAWAY naming the last stream, then close.
                // Sent beside the engine while it is idle, so it lands on a frame boundary.
                var goAway = new byte[FrameHeader.Size + 8];
                new FrameHeader(8, FrameType.GoAway, 0, 0).Write(goAway);
                BinaryPrimitives.WriteUInt32BigEndian(goAway.AsSpan(FrameHeader.Size), 2 * Streams - 1);
                BinaryPrimitives.WriteUInt32BigEndian(goAway.AsSpan(FrameHeader.Size + 4), (uint)Http2ErrorCode.InternalError);
                serverTransport.Socket.Send(goAway);
                serverTransport.Socket.Shutdown(SocketShutdown.Both);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(ending), ending, null);
        }
    }

    private static async Task ExpectByteAsync(Socket socket)
    {
        var buffer = new byte[1];
        Assert.Equal(1, await socket.ReceiveAsync(buffer).WaitAsync(Patience));
    }

    private static byte TcpState(Socket socket)
    {
        Span<byte> info = stackalloc byte[104];
        socket.GetRawSocketOption(6 /* IPPROTO_TCP */, 11 /* TCP_INFO */, info);
        return info[0];
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not met in time");
            await Task.Delay(10);
        }
    }
}

/// <summary>A transport whose reads stop delivering once silenced (what arrives is dropped), as if the peer had gone dark.</summary>
internal sealed class SilenceableStream(NetworkStream inner) : TransportWrapper(inner)
{
    private readonly CancellationTokenSource _disposed = new();
    private volatile bool _silent;

    public void Silence() => _silent = true;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!_silent)
        {
            int read = await Inner.ReadAsync(buffer, cancellationToken);
            if (!_silent)
            {
                return read;
            }
        }
        using var both = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposed.Token);
        await Task.Delay(Timeout.Infinite, both.Token);
        return 0;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _disposed.Cancel();
        }
        base.Dispose(disposing);
    }
}
