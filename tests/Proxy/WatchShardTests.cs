using System.Net.Sockets;
using Weft.Hbone;
using Weft.Proxy;
using Weft.Tests.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Proxy;

/// <summary>
/// The read watch's shards: a connection's sockets wait in one shard, so a request and its answer are taken by one
/// thread (the answer found on its next wait, no second thread woken for it), while unrelated connections spread over
/// the shards. Real loopback sockets, relayed as the proxy relays them; the epoll sets are read from /proc/self/fdinfo.
/// </summary>
public sealed class WatchShardTests
{
    private const int Connections = 8;
    private const int RoundTrips = 200;

    [Fact]
    public async Task APlaintextRelaysTwoSockets_WaitInOneShard_AndItsRoundTripsRunOnOneThread_WhileRelaysSpreadOverTheShards()
    {
        var started = new List<(Socket Client, Socket Server, Task Relay, SocketRelayTests.Counter Counter, SocketRelayTests.Started Started)>();
        try
        {
            for (var i = 0; i < Connections; i++)
            {
                started.Add(await SocketRelayTests.StartAsync());
            }

            var shards = new HashSet<int>();
            foreach (var (client, server, _, counter, relay) in started)
            {
                await PingPongAsync(client, echo: server);
                var shard = ShardHolding(relay.Relay.A);
                Assert.Equal(shard, ShardHolding(relay.Relay.B));
                shards.Add(shard);

                // Both directions' bursts, requests and answers, on the shard's one thread.
                Assert.Single(counter.ThreadIds.Keys);
                counter.AssertBurstsRanOnTheWatch();
            }

            Assert.Equal(Math.Min(2, ReadWatch.Shared.Descriptors.Count), Math.Min(2, shards.Count));
        }
        finally
        {
            foreach (var (client, server, relay, _, _) in started)
            {
                client.Dispose();
                server.Dispose();
                await relay.WaitAsync(Patience);
            }
        }
    }

    [Fact]
    public async Task ATunnelStreamsSocket_WaitsInItsTunnelsShard_AndItsRoundTripsRunOnOneThread_WhileTunnelsSpreadOverTheShards()
    {
        var tunnels = new List<(LoopbackTunnel Tunnel, TunnelSocketStream Transport)>();
        var relays = new List<(NetworkStream Pod, NetworkStream ProxySide)>();
        try
        {
            var shards = new HashSet<int>();
            for (var i = 0; i < Connections; i++)
            {
                TunnelSocketStream? transport = null;
                var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket =>
                {
                    // No turn limit: a loaded machine's pause must not move the reader to the thread pool mid-test.
                    transport = new TunnelSocketStream(socket.Socket, watchTurnTime: TimeSpan.FromMinutes(1));
                    transport.ReadOnWatch();
                    return transport;
                });
                tunnels.Add((tunnel, transport!));

                var stream = await tunnel.ConnectAsync();
                var (pod, proxySide) = await SocketPairAsync();
                var counter = new SocketRelayTests.Counter();
                relays.Add((pod, proxySide));
                new StreamRelay(proxySide.Socket, stream, counter, socketIsA: true).Start(new StreamRelayWatchTests.EndOfRelay());

                await PingPongAsync(pod.Socket, echo: null);
                var shard = ShardHolding(proxySide.Socket);
                Assert.Equal(shard, ShardHolding(transport!.Socket));
                Assert.Equal(ReadWatch.Shared.Descriptors[transport.Shard], shard);
                shards.Add(shard);

                // Toward the tunnel (the socket's bursts) and from it (the tunnel's reads) on the shard's one thread.
                Assert.Single(counter.ThreadIds.Keys);
                counter.AssertBurstsRanOnTheWatch();
            }

            Assert.Equal(Math.Min(2, ReadWatch.Shared.Descriptors.Count), Math.Min(2, shards.Count));
        }
        finally
        {
            foreach (var (pod, proxySide) in relays)
            {
                pod.Dispose();
                proxySide.Dispose();
            }

            foreach (var (tunnel, _) in tunnels)
            {
                await tunnel.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Round trips of 100 bytes from <paramref name="client"/>, answered at once by a thread of its own blocking on
    /// <paramref name="echo"/> (or by the tunnel's echo handler when null), as a ping-pong benchmark answers.
    /// </summary>
    private static async Task PingPongAsync(Socket client, Socket? echo)
    {
        var answering = echo is null ? Task.CompletedTask : Task.Factory.StartNew(() =>
        {
            var buffer = new byte[100];
            for (var i = 0; i < RoundTrips; i++)
            {
                ReceiveExactly(echo, buffer);
                echo.Send(buffer);
            }
        }, TaskCreationOptions.LongRunning);

        var request = new byte[100];
        var answer = new byte[100];
        for (var i = 0; i < RoundTrips; i++)
        {
            request[0] = (byte)i;
            await client.SendAsync(request);
            var read = 0;
            while (read < answer.Length)
            {
                var n = await client.ReceiveAsync(answer.AsMemory(read)).AsTask().WaitAsync(Patience);
                Assert.NotEqual(0, n);
                read += n;
            }

            Assert.Equal(request, answer);
        }

        await answering.WaitAsync(Patience);
    }

    /// <summary>The one shard whose epoll set holds <paramref name="socket"/> (sockets .NET connected are in its engine's set too).</summary>
    private static int ShardHolding(Socket socket) => Assert.Single(EpollSets.Holding(socket), ReadWatch.Shared.Descriptors.Contains);

    private static void ReceiveExactly(Socket socket, byte[] buffer)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = socket.Receive(buffer, read, buffer.Length - read, SocketFlags.None);
            if (n == 0)
            {
                throw new IOException("the relay closed the connection");
            }

            read += n;
        }
    }
}
