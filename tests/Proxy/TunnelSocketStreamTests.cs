using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>
/// The stream under a tunnel's SslStream, on a real loopback socket pair: records that arrived together are read out
/// of one receive, an idle or drained stream holds no buffer, and TLS runs over it unchanged.
/// </summary>
public class TunnelSocketStreamTests
{
    private const int Record = 16 * 1024;

    [Fact]
    public async Task ThreeRecordsWaitingInTheSocket_AreReadOutOfOneReceive_AndTheBufferGoesBackWhenEmpty()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            var sent = RandomNumberGenerator.GetBytes(3 * Record);
            await peer.SendAsync(sent);
            await WaitUntilAsync(() => stream.Socket.Available == sent.Length);

            var read = new byte[sent.Length];
            for (var i = 0; i < 3; i++)
            {
                Assert.Equal(Record, await stream.ReadAsync(read.AsMemory(i * Record, Record)));
                Assert.Equal(i < 2, stream.HoldsReadBuffer);
            }

            Assert.Equal(sent, read);
            Assert.Equal(1, stream.Receives);
        }
    }

    [Fact]
    public async Task AZeroByteRead_WaitsForData_WithoutHoldingABuffer()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            var waiting = stream.ReadAsync(Memory<byte>.Empty).AsTask();
            await Task.Delay(100);
            Assert.False(waiting.IsCompleted);
            Assert.False(stream.HoldsReadBuffer);

            await peer.SendAsync(new byte[] { 7 });
            Assert.Equal(0, await waiting.WaitAsync(TimeSpan.FromSeconds(10)));
            var one = new byte[Record];
            Assert.Equal(1, await stream.ReadAsync(one));
            Assert.Equal(7, one[0]);
            Assert.False(stream.HoldsReadBuffer);

            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await stream.ReadAsync(one).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.False(stream.HoldsReadBuffer);
        }
    }

    [Fact]
    public async Task AZeroByteRead_WithBytesAlreadyWaiting_EndsAtOnce()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            // Bytes that came before the wait end it at once, without waiting for more.
            await peer.SendAsync(new byte[] { 1, 2 });
            await WaitUntilAsync(() => stream.Socket.Available == 2);
            Assert.Equal(0, await stream.ReadAsync(Memory<byte>.Empty).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
            var two = new byte[Record];
            Assert.Equal(2, await stream.ReadAsync(two));
            Assert.Equal([1, 2], two[..2]);
            Assert.False(stream.HoldsReadBuffer);
        }
    }

    [Fact]
    public async Task AReadThatMustWait_WaitsInTheCallersBuffer_NotAPooledOne()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            var into = new byte[Record];
            var waiting = stream.ReadAsync(into).AsTask();
            await Task.Delay(100);
            Assert.False(waiting.IsCompleted);
            Assert.False(stream.HoldsReadBuffer);

            await peer.SendAsync(new byte[] { 1, 2, 3 });
            Assert.Equal(3, await waiting.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal([1, 2, 3], into[..3]);
            Assert.False(stream.HoldsReadBuffer);
        }
    }

    [Fact]
    public async Task APeersReset_IsAnIOException_AsNetworkStreamReportsIt()
    {
        var (stream, peer) = await PairAsync();
        await using (stream)
        {
            peer.LingerState = new LingerOption(true, 0);
            peer.Close();

            var e = await Assert.ThrowsAsync<IOException>(async () => _ = await stream.ReadAsync(new byte[Record]));
            Assert.Equal(SocketError.ConnectionReset, Assert.IsType<SocketException>(e.InnerException).SocketErrorCode);
        }
    }

    [Fact]
    public async Task AWaitingRead_GoesOnOnThePoolDuringTheHandshake_AndOnTheWatchThreadAfterIt()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            var buffer = new byte[Record];
            var handshaking = ReadWhereAsync(stream, buffer);
            await Task.Delay(50);
            await peer.SendAsync(new byte[] { 1 });
            Assert.Equal((1, false), await handshaking.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(0, stream.WatchTurns);

            stream.ReadOnWatch();
            var afterwards = ReadWhereAsync(stream, buffer);
            await Task.Delay(50);
            await peer.SendAsync(new byte[] { 2, 3 });
            Assert.Equal((2, true), await afterwards.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(1, stream.WatchTurns);
            Assert.Equal([2, 3], buffer[..2]);
        }

        static async Task<(int Count, bool OnWatch)> ReadWhereAsync(TunnelSocketStream stream, byte[] into)
        {
            var count = await stream.ReadAsync(into).ConfigureAwait(false);
            return (count, ReadWatch.OnWatchThread);
        }
    }

    [Fact]
    public async Task AReaderWithMoreWaiting_LeavesTheWatchThreadAfterOneTurnsWorth_AndLosesNothing()
    {
        // A small turn, so that what is sent fits in the socket's receive queue on any machine, and time enough that only
        // its bytes end it.
        const int turn = 2 * Record;
        var (stream, peer) = await PairAsync(receiveBuffer: 1 << 20, watchTurnBytes: turn, watchTurnTime: TimeSpan.FromMinutes(1));
        using (peer)
        await using (stream)
        {
            stream.ReadOnWatch();
            var sent = RandomNumberGenerator.GetBytes(8 * Record);
            var reading = ReadAllAsync(stream, sent.Length);
            await Task.Delay(50);
            await peer.SendAsync(sent);

            var (received, onWatch) = await reading.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(sent, received);
            // The first turn read on the watch thread until it had read a turn's worth, then the reader went on on
            // the pool without waiting again.
            Assert.Equal(turn, onWatch);
            Assert.Equal(1, stream.WatchTurns);
        }

        async Task<(byte[] Received, int OnWatch)> ReadAllAsync(TunnelSocketStream stream, int length)
        {
            var received = new byte[length];
            Assert.Equal(0, await stream.ReadAsync(Memory<byte>.Empty).ConfigureAwait(false));
            // On the watch thread now: let every byte arrive, so the turn cannot end for want of bytes.
            Assert.True(ReadWatch.OnWatchThread);
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (stream.Socket.Available < length && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(5);
            }

            Assert.Equal(length, stream.Socket.Available);
            var got = 0;
            var onWatch = -1;
            while (got < length)
            {
                got += await stream.ReadAsync(received.AsMemory(got, Math.Min(Record, length - got))).ConfigureAwait(false);
                if (onWatch < 0 && !ReadWatch.OnWatchThread)
                {
                    onWatch = got - Record;
                }
            }

            return (received, onWatch);
        }
    }

    [Fact]
    public async Task AReaderThatTakesLong_LeavesTheWatchThreadAfterOneTurnsTime_WhateverTheBytes()
    {
        // Few bytes, much work (a peer's tiny records): the turn's time ends it, not its bytes.
        var (stream, peer) = await PairAsync(watchTurnTime: TimeSpan.FromMilliseconds(1));
        using (peer)
        await using (stream)
        {
            stream.ReadOnWatch();
            var reading = ReadSlowlyAsync(stream);
            await Task.Delay(50);
            await peer.SendAsync(new byte[] { 1, 2, 3 });

            Assert.Equal((true, false), await reading.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(1, stream.WatchTurns);
        }

        static async Task<(bool FirstOnWatch, bool SecondOnWatch)> ReadSlowlyAsync(TunnelSocketStream stream)
        {
            var one = new byte[1];
            Assert.Equal(1, await stream.ReadAsync(one).ConfigureAwait(false));
            var first = ReadWatch.OnWatchThread;
            // The work a turn's first byte brought: longer than the turn may last.
            Thread.Sleep(20);
            Assert.Equal(1, await stream.ReadAsync(one).ConfigureAwait(false));
            return (first, ReadWatch.OnWatchThread);
        }
    }

    [Fact]
    public async Task DisposingTheStream_EndsAWaitingRead_AndFreesItsWatchRegistration()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        {
            stream.ReadOnWatch();
            var waiting = stream.ReadAsync(new byte[Record]).AsTask();
            await Task.Delay(50);
            Assert.True(stream.Watched);

            await stream.DisposeAsync();
            await Assert.ThrowsAsync<ObjectDisposedException>(() => waiting.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.False(stream.Watched);
            await Assert.ThrowsAsync<ObjectDisposedException>(async () => _ = await stream.ReadAsync(new byte[Record]));
        }
    }

    [Fact]
    public async Task CancellingAWaitingRead_EndsIt_AndTheNextReadGetsTheBytes()
    {
        var (stream, peer) = await PairAsync();
        using (peer)
        await using (stream)
        {
            stream.ReadOnWatch();
            using var cancel = new CancellationTokenSource();
            var waiting = stream.ReadAsync(new byte[Record], cancel.Token).AsTask();
            await Task.Delay(50);
            await cancel.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(TimeSpan.FromSeconds(10)));

            await peer.SendAsync(new byte[] { 9 });
            var one = new byte[Record];
            Assert.Equal(1, await stream.ReadAsync(one).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(9, one[0]);
        }
    }

    [Fact]
    public async Task TlsOverIt_ReadsThreeWaitingRecordsOutOfOneReceive_AndCarriesAMebibyteEachWay()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=tunnel-test", key, HashAlgorithmName.SHA256);
        using var ephemeral = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        using var certificate = X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pkcs12), null);

        var (clientTransport, serverSocket) = await PairAsync();
        var serverTransport = new TunnelSocketStream(serverSocket);
        await using var client = new SslStream(clientTransport, leaveInnerStreamOpen: false, (_, _, _, _) => true);
        await using var server = new SslStream(serverTransport, leaveInnerStreamOpen: false);
        await Task.WhenAll(
            client.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "tunnel-test", EnabledSslProtocols = System.Security.Authentication.SslProtocols.Tls13 }),
            server.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = certificate }));
        clientTransport.ReadOnWatch();
        serverTransport.ReadOnWatch();

        // Three full records (16 KiB each, plus 22 bytes of TLS 1.3 header, type and tag) waiting in the socket.
        var receivedBefore = serverTransport.Receives;
        var three = RandomNumberGenerator.GetBytes(3 * Record);
        await client.WriteAsync(three);
        await client.FlushAsync();
        await WaitUntilAsync(() => serverTransport.Socket.Available == 3 * (Record + 22));
        var threeRead = new byte[three.Length];
        await server.ReadExactlyAsync(threeRead);
        Assert.Equal(three, threeRead);
        Assert.Equal(1, serverTransport.Receives - receivedBefore);

        var up = RandomNumberGenerator.GetBytes(1 << 20);
        var down = RandomNumberGenerator.GetBytes(1 << 20);
        var received = await Task.WhenAll(ExchangeAsync(client, up, down.Length), ExchangeAsync(server, down, up.Length)).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(down, received[0]);
        Assert.Equal(up, received[1]);
        Assert.False(clientTransport.HoldsReadBuffer);
        Assert.False(serverTransport.HoldsReadBuffer);

        // A read that waits for a record goes on on the watch thread, each way.
        foreach (var (reader, readerTransport, writer) in new[] { (server, serverTransport, client), (client, clientTransport, server) })
        {
            var turns = readerTransport.WatchTurns;
            var one = new byte[16];
            var waiting = reader.ReadAsync(one).AsTask();
            await Task.Delay(50);
            await writer.WriteAsync(new byte[] { 42 });
            await writer.FlushAsync();
            Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(42, one[0]);
            Assert.True(readerTransport.WatchTurns > turns, $"the reader went on on the watch thread after the handshake ({turns} turns before, {readerTransport.WatchTurns} after)");
        }
    }

    /// <summary>Writes <paramref name="send"/> in 40 KiB pieces, each flushed, while reading <paramref name="expect"/> bytes.</summary>
    private static async Task<byte[]> ExchangeAsync(SslStream tls, byte[] send, int expect)
    {
        var writing = Task.Run(async () =>
        {
            for (var offset = 0; offset < send.Length; offset += 40 * 1024)
            {
                await tls.WriteAsync(send.AsMemory(offset, Math.Min(40 * 1024, send.Length - offset)));
                await tls.FlushAsync();
            }
        });
        var received = new byte[expect];
        await tls.ReadExactlyAsync(received);
        await writing;
        return received;
    }

    private static async Task<(TunnelSocketStream Stream, Socket Peer)> PairAsync(int receiveBuffer = 0, int watchTurnBytes = TunnelSocketStream.WatchTurnBytes,
        TimeSpan? watchTurnTime = null)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        if (receiveBuffer > 0)
        {
            // Set before connecting, so the window it advertises lets the whole transfer in at once.
            socket.ReceiveBufferSize = receiveBuffer;
        }

        await socket.ConnectAsync(listener.LocalEndPoint!);
        return (new TunnelSocketStream(socket, watchTurnBytes, watchTurnTime), await listener.AcceptAsync());
    }

    private static async Task<byte[]> ReceiveAsync(Socket socket, int count)
    {
        var buffer = new byte[count];
        var got = 0;
        using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (got < count)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, patience.Token);
            Assert.NotEqual(0, n);
            got += n;
        }

        return buffer;
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out");
            await Task.Delay(10);
        }
    }
}
