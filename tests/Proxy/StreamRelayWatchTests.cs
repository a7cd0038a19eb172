using System.Net;
using System.Security.Cryptography;
using Weft.Hbone;
using Weft.Proxy;
using Weft.Telemetry;
using Weft.Tests.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Proxy;

/// <summary>
/// A relay's bursts toward the tunnel run on the read watch's thread that saw the app's bytes (no thread-pool hop per
/// request), and one burst there moves a bounded amount before it lets the watch's other sockets run. A real HBONE
/// tunnel over loopback, relayed as the proxy relays it.
/// </summary>
[Collection(WatchCountCollection.Name)]
public sealed class StreamRelayWatchTests
{
    [Fact]
    public async Task AnAppThatStopsReading_GetsEveryByteFromTheTunnelOnceItReadsAgain_TheRelayWaitingInTheWritableWatchNotTheSocketEngine()
    {
        // 16 MiB from the tunnel's far end, far more than the socket pair's buffers: the relay's non-blocking sends fill
        // the app's socket, the rest waits in the stream's pipe, and the relay waits for room.
        var sent = RandomNumberGenerator.GetBytes(16 << 20);
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            await using (stream)
            {
                await stream.Output.WriteAsync(sent);
                await stream.Output.CompleteAsync();

                // Until the app's end of stream: disposing a stream whose peer still sends resets it, and the relay
                // would pass the reset on to the app's socket with bytes not yet read.
                await ReadToEndAsync(stream.Input);
            }
        });

        var registrations = ReadWatch.Writable.Count;
        var (pod, proxySide, end) = await RelayAsync(tunnel);
        using (pod)
        using (proxySide)
        {
            // The relay fills the app's socket and then waits for room: its wait's registration shows it.
            using (var filling = new CancellationTokenSource(Patience))
            {
                while (ReadWatch.Writable.Count == registrations && !filling.IsCancellationRequested)
                {
                    await Task.Delay(20);
                }
            }

            Assert.Equal(registrations + 1, ReadWatch.Writable.Count);
            var holding = EpollSets.Holding(proxySide.Socket);
            Assert.Equal(2, holding.Count);
            Assert.Contains(ReadWatch.Writable.Descriptors[0], holding);
            Assert.Contains(holding, ReadWatch.Shared.Descriptors.Contains);

            var received = new MemoryStream();
            var buffer = new byte[64 * 1024];
            using var patience = new CancellationTokenSource(Patience);
            int read;
            while ((read = await pod.ReadAsync(buffer, patience.Token)) > 0)
            {
                received.Write(buffer, 0, read);
            }

            Assert.Equal(sent, received.ToArray());
            pod.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            await end.Relay.WaitAsync(Patience);

            // No .NET socket engine took the socket on the way, and the wait's registration went with the relay.
            Assert.DoesNotContain(EpollSets.Holding(proxySide.Socket), epoll => !ReadWatch.Shared.Descriptors.Contains(epoll) && !ReadWatch.Writable.Descriptors.Contains(epoll));
            Assert.Equal(registrations, ReadWatch.Writable.Count);
        }
    }

    [Fact]
    public async Task RequestsAndAFlood_GoThroughWhole_EachBurstStartingOnTheWatchThread_AndNoTurnThereUnbounded()
    {
        var received = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            var stream = await request.AcceptAsync();
            await using (stream)
            {
                received.TrySetResult(await ReadToEndAsync(stream.Input));
            }
        });

        var (pod, proxySide, end) = await RelayAsync(tunnel);
        using (pod)
        using (proxySide)
        {
            // Ten small requests, each after the last has surely gone (each is a burst of its own), then a flood.
            var sent = new MemoryStream();
            for (var i = 0; i < 10; i++)
            {
                var request = RandomNumberGenerator.GetBytes(1024);
                await pod.WriteAsync(request);
                sent.Write(request);
                await Task.Delay(20);
            }

            var flood = RandomNumberGenerator.GetBytes(8 << 20);
            await pod.WriteAsync(flood);
            sent.Write(flood);
            pod.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);

            Assert.Equal(sent.ToArray(), await received.Task.WaitAsync(Patience));
            var relay = await end.Relay.WaitAsync(Patience);
            Assert.True(relay.Bursts >= 11, $"{relay.Bursts} bursts");
            Assert.Equal(relay.Bursts, relay.BurstsOnWatch);
            Assert.InRange(relay.LongestTurnOnWatch, 1024, (256 * 1024) + RelayPumps.CopyBufferSize);
        }
    }

    /// <summary>A stream of <paramref name="tunnel"/> relayed, as the proxy relays it, to the proxy's end of a socket pair whose other end plays the app.</summary>
    private static async Task<(System.Net.Sockets.NetworkStream Pod, System.Net.Sockets.NetworkStream ProxySide, EndOfRelay End)> RelayAsync(LoopbackTunnel tunnel)
    {
        var tunnelStream = await tunnel.ConnectAsync();
        var (pod, proxySide) = await SocketPairAsync();
        var connection = new ProxyConnection(new Flow(FlowDirection.Outbound, new IPEndPoint(IPAddress.Loopback, 1), new IPEndPoint(IPAddress.Loopback, 2)));
        var end = new EndOfRelay();
        connection.StartRelay(proxySide.Socket, tunnelStream, socketIsClient: true, end);
        return (pod, proxySide, end);
    }

    /// <summary>What a relay's owner hears when it is over: the relay, once both directions have ended.</summary>
    internal sealed class EndOfRelay : IRelayEnd<StreamRelay>
    {
        private readonly TaskCompletionSource<StreamRelay> _relay = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<StreamRelay> Relay => _relay.Task;

        public void RelayEnded(StreamRelay relay) => _relay.TrySetResult(relay);
    }
}
