using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>The relay between two real loopback socket pairs: client ⇄ [relay] ⇄ server.</summary>
public class SocketRelayTests
{
    private sealed class Counter : IRelayObserver
    {
        public long FromA;
        public long FromB;

        public void OnBytes(bool fromA, int count)
        {
            if (fromA)
            {
                Interlocked.Add(ref FromA, count);
            }
            else
            {
                Interlocked.Add(ref FromB, count);
            }
        }
    }

    private static async Task<(Socket client, Socket server, Task relay, Counter counter)> StartAsync()
    {
        using var front = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var back = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        front.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        back.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        front.Listen();
        back.Listen();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(front.LocalEndPoint!);
        var relayA = await front.AcceptAsync();
        var relayB = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await relayB.ConnectAsync(back.LocalEndPoint!);
        var server = await back.AcceptAsync();
        var counter = new Counter();
        var relay = new SocketRelay(relayA, relayB, counter).RunAsync().ContinueWith(t =>
        {
            relayA.Dispose();
            relayB.Dispose();
            return t;
        }).Unwrap();
        return (client, server, relay, counter);
    }

    private static async Task<byte[]> ReadToEndAsync(Socket socket)
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
        var (client, server, relay, counter) = await StartAsync();
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
        }
    }

    [Fact]
    public async Task ServerThatStopsReadingForASecond_GetsEveryByteOnceInOrder_WhenItReadsAgain()
    {
        // 16 MiB against a server that reads nothing for a second: the relay's sends stop fitting in the socket
        // buffer, queue what fits at once and wait for room for the rest.
        var (client, server, relay, counter) = await StartAsync();
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
        }
    }

    [Fact]
    public async Task ServerReset_ReachesClientAsReset()
    {
        var (client, server, relay, _) = await StartAsync();
        using (client)
        {
            await client.SendAsync(new byte[] { 1, 2, 3 }, SocketFlags.None);
            var buffer = new byte[3];
            Assert.Equal(3, await server.ReceiveAsync(buffer, SocketFlags.None));
            server.LingerState = new LingerOption(true, 0);
            server.Close();
            var error = await Assert.ThrowsAsync<SocketException>(async () =>
            {
                var b = new byte[16];
                while (await client.ReceiveAsync(b, SocketFlags.None) > 0)
                {
                }
            });
            Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
            await relay.WaitAsync(TimeSpan.FromSeconds(10));
        }
    }
}
