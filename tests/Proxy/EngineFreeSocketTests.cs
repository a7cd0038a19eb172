using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>
/// Upstream connects and tunnel writes wait in the agent's own watches, never in .NET's socket engine: a socket the
/// engine once waited for stays in its epoll set, and its thread then wakes for every segment the socket receives.
/// Real loopback sockets; what the kernel lists in /proc/self/fdinfo says which epoll sets hold a socket.
/// </summary>
[Collection(WatchCountCollection.Name)]
public sealed class EngineFreeSocketTests
{
    [Fact]
    public async Task AnUpstreamConnect_IsConnectedAndCarriesBytes_AndNoEpollSetHoldsTheSocketAfterIt()
    {
        using var listener = Listener();
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var registrations = ReadWatch.Writable.Count;

        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await Upstream.ConnectOnceAsync(socket, endpoint, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        using var accepted = await listener.AcceptAsync();

        Assert.True(socket.Connected);
        Assert.Equal(endpoint, socket.RemoteEndPoint);
        Assert.Equal(accepted.RemoteEndPoint, socket.LocalEndPoint);
        Assert.Empty(EpollSets.Holding(socket));
        Assert.Equal(registrations, ReadWatch.Writable.Count);

        // Blocking calls still block, as after Socket.ConnectAsync.
        Assert.True(socket.Blocking);
        var ask = RandomNumberGenerator.GetBytes(1000);
        Assert.Equal(ask.Length, socket.Send(ask));
        var got = new byte[ask.Length];
        var read = 0;
        while (read < got.Length)
        {
            read += accepted.Receive(got.AsSpan(read));
        }

        Assert.Equal(ask, got);

        // What the check above rules out: a socket connected by the engine is in one of this process's epoll sets.
        using var engines = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await engines.ConnectAsync(endpoint);
        using var acceptedToo = await listener.AcceptAsync();
        Assert.NotEmpty(EpollSets.Holding(engines));
    }

    [Fact]
    public async Task ALoopbackConnect_HasEndedWhenConnectReturns_AndWaitsForNothing()
    {
        // An inbound delivery connects to an app in the pod's own namespace, over loopback: the kernel has answered
        // the SYN before connect(2) returns, so there is no wait in the watch and no hop to the thread pool after it.
        // (When softirqs pile up the kernel defers them to ksoftirqd, and a connect can return before its handshake:
        // then it waits in the watch as before, so on a loaded machine only most of them, not all, end at once.)
        using var listener = Listener();
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var atOnce = 0;
        for (var i = 0; i < 20; i++)
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            var connecting = Upstream.ConnectOnceAsync(socket, endpoint, CancellationToken.None);
            atOnce += connecting.IsCompletedSuccessfully ? 1 : 0;
            await connecting.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.True(socket.Connected);
            Assert.True(socket.Blocking);
            using var accepted = await listener.AcceptAsync();
            Assert.Equal(accepted.RemoteEndPoint, socket.LocalEndPoint);
        }

        Assert.True(atOnce >= 10, $"{atOnce} of 20 loopback connects had ended when ConnectOnceAsync returned");
    }

    [Fact]
    public async Task AnUpstreamConnectToAClosedPort_IsRefused_AndFreesItsRegistration()
    {
        using var listener = Listener();
        var closed = (IPEndPoint)listener.LocalEndPoint!;
        listener.Dispose();
        var registrations = ReadWatch.Writable.Count;

        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var error = await Assert.ThrowsAsync<SocketException>(() => Upstream.ConnectOnceAsync(socket, closed, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

        Assert.Equal(SocketError.ConnectionRefused, error.SocketErrorCode);
        Assert.Equal(registrations, ReadWatch.Writable.Count);
    }

    [Fact]
    public async Task AnUpstreamConnectThatGetsNoAnswer_EndsWhenCancelled_AndFreesItsRegistration()
    {
        // A listener whose accept queue is full drops further SYNs: the next connect waits for an answer that never comes.
        using var listener = Listener(backlog: 1);
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var queued = new List<Socket>();
        try
        {
            var registrations = ReadWatch.Writable.Count;
            while (true)
            {
                var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                queued.Add(filler);
                var connect = filler.ConnectAsync(endpoint);
                if (await Task.WhenAny(connect, Task.Delay(300)) != connect)
                {
                    break;  // the queue is full: this SYN went unanswered
                }

                Assert.True(queued.Count < 16, "the listener's accept queue never filled");
            }

            using var cancel = new CancellationTokenSource();
            using var unanswered = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            var pending = Upstream.ConnectOnceAsync(unanswered, endpoint, cancel.Token);
            await Task.Delay(200);
            Assert.False(pending.IsCompleted);
            Assert.Equal(registrations + 1, ReadWatch.Writable.Count);

            await cancel.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(registrations, ReadWatch.Writable.Count);
            Assert.Empty(EpollSets.Holding(unanswered));
        }
        finally
        {
            foreach (var socket in queued)
            {
                socket.Dispose();
            }
        }
    }

    [Fact]
    public async Task ATunnelWriteToAFullSocket_WaitsInTheWritableWatch_AndDeliversEveryByteOnceThePeerReads()
    {
        using var listener = Listener();
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await Upstream.ConnectOnceAsync(socket, listener.LocalEndPoint!, CancellationToken.None);
        using var peer = await listener.AcceptAsync();
        var stream = new TunnelSocketStream(socket);
        await using (stream)
        {
            // Far more than the two sockets' buffers hold: the write must wait for the peer to read.
            var sent = RandomNumberGenerator.GetBytes(16 << 20);
            var writing = stream.WriteAsync(sent).AsTask();
            await Task.Delay(200);
            Assert.False(writing.IsCompleted);
            Assert.Equal(ReadWatch.Writable.Descriptors, EpollSets.Holding(socket));

            var received = new byte[sent.Length];
            var got = 0;
            using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (got < received.Length)
            {
                got += await peer.ReceiveAsync(received.AsMemory(got), SocketFlags.None, patience.Token);
            }

            await writing.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(sent, received);
            Assert.Equal(ReadWatch.Writable.Descriptors, EpollSets.Holding(socket));
        }
    }

    [Fact]
    public async Task DisposingATunnelStream_EndsAWriteWaitingForRoom_WithAnIOException()
    {
        using var listener = Listener();
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await Upstream.ConnectOnceAsync(socket, listener.LocalEndPoint!, CancellationToken.None);
        using var peer = await listener.AcceptAsync();
        var registrations = ReadWatch.Writable.Count;
        var stream = new TunnelSocketStream(socket);

        var writing = stream.WriteAsync(new byte[16 << 20]).AsTask();
        await Task.Delay(200);
        Assert.False(writing.IsCompleted);
        Assert.Equal(registrations + 1, ReadWatch.Writable.Count);

        await stream.DisposeAsync();
        await Assert.ThrowsAsync<IOException>(() => writing.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(registrations, ReadWatch.Writable.Count);
    }

    private static Socket Listener(int backlog = 16)
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(backlog);
        return listener;
    }
}

/// <summary>Runs alone: its tests count the registrations of the agent-wide writable watch, which other relays use too.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class WatchCountCollection
{
    public const string Name = "writable watch registrations";
}
