using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>The relay between two real loopback socket pairs: client ⇄ [relay] ⇄ server.</summary>
public class SocketRelayTests
{
    internal sealed class Counter : IRelayObserver
    {
        public long FromA;
        public long FromB;

        /// <summary>Names of the threads the relay's bursts ran on.</summary>
        public readonly System.Collections.Concurrent.ConcurrentDictionary<string, bool> Threads = new();

        /// <summary>Ids of the threads the relay's bursts ran on.</summary>
        public readonly System.Collections.Concurrent.ConcurrentDictionary<int, bool> ThreadIds = new();

        public void OnBytes(bool fromA, int count)
        {
            Threads.TryAdd(Thread.CurrentThread.Name ?? "(unnamed)", true);
            ThreadIds.TryAdd(Environment.CurrentManagedThreadId, true);
            if (fromA)
            {
                Interlocked.Add(ref FromA, count);
            }
            else
            {
                Interlocked.Add(ref FromB, count);
            }
        }

        /// <summary>Every burst ran on a watch thread, in the turn that saw the socket ready, none a thread-pool hop later.</summary>
        public void AssertBurstsRanOnTheWatch()
        {
            Assert.NotEmpty(Threads);
            Assert.All(Threads.Keys, name => Assert.True(name is "weft-readwatch" or "weft-writewatch", $"a burst ran on '{name}'"));
        }
    }

    /// <param name="bufferBytes">
    /// When set, every socket's send and receive buffer is fixed at this size before it connects, which turns off the
    /// kernel's buffer autotuning: what the four sockets can hold no longer depends on the machine's tcp_rmem/tcp_wmem.
    /// </param>
    internal static async Task<(Socket client, Socket server, Task relay, Counter counter, Started started)> StartAsync(int? bufferBytes = null)
    {
        using var front = NewSocket(bufferBytes);
        using var back = NewSocket(bufferBytes);
        front.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        back.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        front.Listen();
        back.Listen();
        var client = NewSocket(bufferBytes);
        await client.ConnectAsync(front.LocalEndPoint!);
        var relayA = await front.AcceptAsync();
        var relayB = NewSocket(bufferBytes);
        await relayB.ConnectAsync(back.LocalEndPoint!);
        var server = await back.AcceptAsync();
        var counter = new Counter();
        var ended = new EndSignal();
        var socketRelay = new SocketRelay(relayA, relayB, counter);
        socketRelay.Start(ended);
        var relay = ended.Task.ContinueWith(_ =>
        {
            relayA.Dispose();
            relayB.Dispose();
        }, TaskScheduler.Default);
        return (client, server, relay, counter, new Started(socketRelay, ended));
    }

    private static Socket NewSocket(int? bufferBytes)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (bufferBytes is int bytes)
        {
            // Accepted sockets take the listener's sizes.
            socket.SendBufferSize = bytes;
            socket.ReceiveBufferSize = bytes;
        }

        return socket;
    }

    internal sealed record Started(SocketRelay Relay, EndSignal Ended);

    /// <summary>What a connection's owner hears when the relay is over.</summary>
    internal sealed class EndSignal : IRelayEnd<SocketRelay>
    {
        private readonly TaskCompletionSource _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _count;

        public Task Task => _ended.Task;

        /// <summary>How many times the relay said it ended: a second time would finish a connection twice.</summary>
        public int Count => Volatile.Read(ref _count);

        public void RelayEnded(SocketRelay relay)
        {
            Interlocked.Increment(ref _count);
            _ended.TrySetResult();
        }
    }

    internal static async Task<byte[]> ReadToEndAsync(Socket socket)
    {
        var all = new MemoryStream();
        var buffer = new byte[65536];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None)) > 0)
        {
            all.Write(buffer, 0, n);
        }

        return all.ToArray();
    }

    [Fact]
    public async Task HalfClose_ClientShutsWrite_ServerReplyStillArrives()
    {
        var (client, server, relay, counter, started) = await StartAsync();
        using (client)
        using (server)
        {
            var request = RandomNumberGenerator.GetBytes(3 * 1024 * 1024 + 17);
            var sendTask = Task.Run(async () =>
            {
                await client.SendAsync(request, SocketFlags.None);
                client.Shutdown(SocketShutdown.Send);
            });
            var received = await ReadToEndAsync(server);
            await sendTask;
            Assert.Equal(SHA256.HashData(request), SHA256.HashData(received));

            // The server answers after it saw the client's end of stream.
            var reply = RandomNumberGenerator.GetBytes(1024 * 1024 + 3);
            await server.SendAsync(reply, SocketFlags.None);
            server.Shutdown(SocketShutdown.Send);
            var answer = await ReadToEndAsync(client);
            Assert.Equal(SHA256.HashData(reply), SHA256.HashData(answer));
            await relay.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(request.Length, counter.FromA);
            Assert.Equal(reply.Length, counter.FromB);

            // Every byte went socket to socket through a pipe, none through the agent's memory.
            Assert.Equal(request.Length + reply.Length, started.Relay.SplicedBytes);
            Assert.Equal(1, started.Ended.Count);

            counter.AssertBurstsRanOnTheWatch();
        }
    }

    [Fact]
    public async Task ServerThatStopsReadingForASecond_GetsEveryByteOnceInOrder_WhenItReadsAgain()
    {
        // 16 MiB against a server that reads nothing for a second: the relay's splices stop fitting in the socket
        // buffer, move what fits at once and wait in the write watch for room for the rest. The buffers are fixed at
        // 128 KiB: autotuned, on a machine whose tcp_rmem allows 32 MiB, the four sockets and the pipe once held all
        // 16 MiB and the sender never waited.
        var (client, server, relay, counter, started) = await StartAsync(bufferBytes: 128 * 1024);
        using (client)
        using (server)
        {
            var request = RandomNumberGenerator.GetBytes(16 * 1024 * 1024 + 5);
            var sendTask = Task.Run(async () =>
            {
                for (var offset = 0; offset < request.Length; offset += 100_000)
                {
                    await client.SendAsync(request.AsMemory(offset, Math.Min(100_000, request.Length - offset)), SocketFlags.None);
                }

                client.Shutdown(SocketShutdown.Send);
            });
            await Task.Delay(TimeSpan.FromSeconds(1));
            Assert.False(sendTask.IsCompleted, "16 MiB fitted in the socket buffers: the test shows nothing");
            var received = await ReadToEndAsync(server);
            await sendTask;
            Assert.Equal(SHA256.HashData(request), SHA256.HashData(received));
            server.Shutdown(SocketShutdown.Send);
            Assert.Empty(await ReadToEndAsync(client));
            await relay.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(request.Length, counter.FromA);

            // The relay waited for room with its bytes in the pipe, and lost none of them.
            Assert.Equal(request.Length, started.Relay.SplicedBytes);
            counter.AssertBurstsRanOnTheWatch();
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task OneSideReset_ReachesTheOtherAsReset(bool serverResets)
    {
        var (client, server, relay, _, _) = await StartAsync();
        var (resetting, other) = serverResets ? (server, client) : (client, server);
        using (other)
        {
            await client.SendAsync(new byte[] { 1, 2, 3 }, SocketFlags.None);
            var buffer = new byte[3];
            Assert.Equal(3, await server.ReceiveAsync(buffer, SocketFlags.None));
            resetting.LingerState = new LingerOption(true, 0);
            resetting.Close();
            var error = await Assert.ThrowsAsync<SocketException>(async () =>
            {
                var b = new byte[16];
                while (await other.ReceiveAsync(b, SocketFlags.None) > 0)
                {
                }
            });
            Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
            await relay.WaitAsync(TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public async Task IdleRelay_Abort_ResetsBothSides_AndEndsOnce()
    {
        var (client, server, relay, _, started) = await StartAsync();
        using (client)
        using (server)
        {
            // One exchange each way, then idle: both directions wait in the read watch.
            await client.SendAsync(new byte[] { 7 }, SocketFlags.None);
            var one = new byte[1];
            Assert.Equal(1, await server.ReceiveAsync(one, SocketFlags.None));
            await server.SendAsync(new byte[] { 8 }, SocketFlags.None);
            Assert.Equal(1, await client.ReceiveAsync(one, SocketFlags.None));

            started.Relay.Abort();
            await relay.WaitAsync(TimeSpan.FromSeconds(10));
            foreach (var side in new[] { client, server })
            {
                var error = await Assert.ThrowsAsync<SocketException>(async () => await side.ReceiveAsync(new byte[16], SocketFlags.None));
                Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
            }

            // A second abort (the idle sweep and a shutdown drain can both reach one connection) ends nothing again.
            started.Relay.Abort();
            await Task.Delay(200);
            Assert.Equal(1, started.Ended.Count);
        }
    }
}

/// <summary>Runs alone: it lowers the agent-wide limit on pipes that every splicing relay of the process shares.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SplicePipeLimitCollection
{
    public const string Name = "splice pipe limit";
}

/// <summary>Relays whose destinations do not read hold pipes; past the limit the rest copy through a buffer.</summary>
[Collection(SplicePipeLimitCollection.Name)]
public class SplicePipeLimitTests
{
    [Fact]
    public async Task RelaysPastThePipeLimit_CopyInstead_AndEveryByteArrivesInOrder()
    {
        const int Relays = 4, Limit = 2;
        var before = (SplicePipes.MaxInUse, SplicePipes.Unavailable);
        var relays = new List<(Socket Client, Socket Server, Task Relay, SocketRelayTests.Started Started)>();
        SplicePipes.MaxInUse = SplicePipes.InUse + Limit;
        try
        {
            for (var i = 0; i < Relays; i++)
            {
                // Buffers fixed at 128 KiB, so autotuning cannot make room for all 32 MiB (see the stalled-server test).
                var (client, server, relay, _, started) = await SocketRelayTests.StartAsync(bufferBytes: 128 * 1024);
                relays.Add((client, server, relay, started));
            }

            // 32 MiB each toward servers that read nothing for a second: every relay's destination fills, and a
            // splicing relay waits for room holding its pipe.
            var request = RandomNumberGenerator.GetBytes(32 * 1024 * 1024 + 11);
            var sends = relays.Select(r => Task.Run(async () =>
            {
                await r.Client.SendAsync(request, SocketFlags.None);
                r.Client.Shutdown(SocketShutdown.Send);
            })).ToList();
            await Task.Delay(TimeSpan.FromSeconds(1));
            Assert.All(sends, s => Assert.False(s.IsCompleted, "32 MiB fitted in the socket buffers: the test shows nothing"));
            Assert.InRange(SplicePipes.InUse, 0, SplicePipes.MaxInUse);
            Assert.True(SplicePipes.Unavailable > before.Unavailable, "no burst found the pipes used up");

            foreach (var (client, server, relay, started) in relays)
            {
                var received = await SocketRelayTests.ReadToEndAsync(server);
                Assert.Equal(SHA256.HashData(request), SHA256.HashData(received));
                server.Shutdown(SocketShutdown.Send);
                Assert.Empty(await SocketRelayTests.ReadToEndAsync(client));
                await relay.WaitAsync(TimeSpan.FromSeconds(10));
            }

            await Task.WhenAll(sends);

            // Some bytes went through pipes and some through buffers: both paths carried this run.
            var spliced = relays.Sum(r => r.Started.Relay.SplicedBytes);
            Assert.InRange(spliced, 1, (long)Relays * request.Length - 1);
        }
        finally
        {
            SplicePipes.MaxInUse = before.MaxInUse;
            foreach (var (client, server, _, _) in relays)
            {
                client.Dispose();
                server.Dispose();
            }
        }
    }
}
