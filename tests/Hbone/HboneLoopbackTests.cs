using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Security.Cryptography;
using System.Text;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>Our client against our server over loopback TCP.</summary>
public class HboneLoopbackTests
{
    [Fact]
    public async Task Connect_OneStream_EchoesBytesAndCarriesAuthorityAndHeaders()
    {
        var seen = new TaskCompletionSource<HboneRequest>();
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            seen.TrySetResult(request);
            await EchoHandler(request);
        });

        HboneStream stream = await tunnel.Client.ConnectAsync("10.244.2.7:8080",
            [new("forwarded", "for=\"10.244.1.2:40000\""), new("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
            CancellationToken.None).WaitAsync(Patience);
        await WriteAsync(stream.Output, "hello through the tunnel");
        await stream.Output.CompleteAsync();

        Assert.Equal("hello through the tunnel", Encoding.UTF8.GetString(await ReadToEndAsync(stream.Input).WaitAsync(Patience)));
        HboneRequest request = await seen.Task;
        Assert.Equal("10.244.2.7:8080", request.Authority);
        Assert.Contains(new KeyValuePair<string, string>("forwarded", "for=\"10.244.1.2:40000\""), request.Headers);
        Assert.Contains(request.Headers, h => h.Key == "traceparent");
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task HalfClose_ClientFinishesFirst_ServerKeepsSendingUntilItCloses()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            byte[] received = await ReadToEndAsync(stream.Input);
            // The client's half is closed; ours still carries data.
            await Task.Delay(50);
            await WriteAsync(stream.Output, $"got {received.Length} bytes, ");
            await WriteAsync(stream.Output, "bye");
            await stream.Output.CompleteAsync();
        });

        HboneStream client = await tunnel.ConnectAsync();
        await WriteAsync(client.Output, "12345");
        await client.Output.CompleteAsync();
        Assert.Equal("got 5 bytes, bye", Encoding.UTF8.GetString(await ReadToEndAsync(client.Input).WaitAsync(Patience)));
    }

    [Fact]
    public async Task HalfClose_ServerFinishesFirst_ClientKeepsSending()
    {
        var serverGot = new TaskCompletionSource<string>();
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            await WriteAsync(stream.Output, "banner");
            await stream.Output.CompleteAsync();
            serverGot.TrySetResult(Encoding.UTF8.GetString(await ReadToEndAsync(stream.Input)));
        });

        HboneStream client = await tunnel.ConnectAsync();
        Assert.Equal("banner", Encoding.UTF8.GetString(await ReadToEndAsync(client.Input).WaitAsync(Patience)));
        await WriteAsync(client.Output, "still talking");
        await client.Output.CompleteAsync();
        Assert.Equal("still talking", await serverGot.Task.WaitAsync(Patience));
    }

    [Fact]
    public async Task Reset_ByClient_FailsServerInputWithTheCode()
    {
        var serverError = new TaskCompletionSource<Exception>();
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            try
            {
                await ReadToEndAsync(stream.Input);
                serverError.TrySetResult(new Exception("input ended normally"));
            }
            catch (Exception e)
            {
                serverError.TrySetResult(e);
            }
        });

        HboneStream client = await tunnel.ConnectAsync();
        await WriteAsync(client.Output, "partial");
        await Task.Delay(50);
        client.Reset((uint)Http2ErrorCode.ConnectError);

        var error = Assert.IsType<HboneException>(await serverError.Task.WaitAsync(Patience));
        Assert.Equal(Http2ErrorCode.ConnectError, error.ErrorCode);
        await Assert.ThrowsAsync<HboneException>(() => ReadToEndAsync(client.Input));
        // The connection itself carries on.
        HboneStream next = await tunnel.ConnectAsync();
        await next.Output.CompleteAsync();
    }

    [Fact]
    public async Task Reset_ByServer_FailsClientInput()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            await ReadExactlyAsync(stream.Input, 4);
            stream.Reset((uint)Http2ErrorCode.ConnectError);
        });

        HboneStream client = await tunnel.ConnectAsync();
        await WriteAsync(client.Output, "ping");
        var error = await Assert.ThrowsAsync<HboneException>(() => ReadToEndAsync(client.Input).WaitAsync(Patience));
        Assert.Equal(Http2ErrorCode.ConnectError, error.ErrorCode);
        Assert.Equal(0, await WaitForAsync(() => tunnel.Client.ActiveStreams, 0));
    }

    [Fact]
    public async Task Reject_SurfacesTheStatusToTheClient()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(request => request.RejectAsync(403));

        var error = await Assert.ThrowsAsync<HboneException>(() => tunnel.ConnectAsync());
        Assert.Equal(403, error.StatusCode);
        Assert.True(tunnel.Client.CanOpenStream);
    }

    [Fact]
    public async Task Handler_ThatThrowsBeforeAnswering_Gives500()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(_ => throw new InvalidOperationException("no upstream"));
        var error = await Assert.ThrowsAsync<HboneException>(() => tunnel.ConnectAsync());
        Assert.Equal(500, error.StatusCode);
    }

    [Fact]
    public async Task TwoHundredConcurrentStreams_AllEchoTheirOwnBytes()
    {
        var settings = QuietSettings with { MaxConcurrentStreams = 250 };
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, settings, settings);

        var streams = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => tunnel.ConnectAsync()));
        Assert.Equal(200, tunnel.Client.ActiveStreams);
        await Task.WhenAll(streams.Select(async (stream, i) =>
        {
            byte[] payload = RandomNumberGenerator.GetBytes(1000 + i * 37);
            Task<byte[]> echoed = ReadToEndAsync(stream.Input);
            await stream.Output.WriteAsync(payload);
            await stream.Output.CompleteAsync();
            Assert.Equal(payload, await echoed.WaitAsync(Patience));
            await stream.DisposeAsync();
        }));
        Assert.Equal(0, await WaitForAsync(() => tunnel.Client.ActiveStreams, 0));
    }

    [Fact]
    public async Task ConcurrencyLimit_CanOpenStreamTurnsFalseAtTheCap()
    {
        var release = new TaskCompletionSource();
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            await release.Task;
            await stream.Output.CompleteAsync();
        }, clientSettings: QuietSettings with { MaxConcurrentStreams = 3 });

        var streams = new List<HboneStream>();
        for (int i = 0; i < 3; i++)
        {
            streams.Add(await tunnel.ConnectAsync());
        }
        Assert.False(tunnel.Client.CanOpenStream);
        var refused = await Assert.ThrowsAsync<HboneException>(() => tunnel.ConnectAsync());
        Assert.True(refused.IsRetryable);

        release.SetResult();
        foreach (HboneStream stream in streams)
        {
            await stream.Output.CompleteAsync();
            await ReadToEndAsync(stream.Input).WaitAsync(Patience);
        }
        Assert.True(await WaitForAsync(() => tunnel.Client.CanOpenStream, true));
    }

    [Fact]
    public async Task SixtyFourMiB_ThroughOneStream_ArriveByteIdentical()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler);
        HboneStream stream = await tunnel.ConnectAsync();

        const int total = 64 * 1024 * 1024;
        var sentHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Task send = Task.Run(async () =>
        {
            var random = new Random(7);
            byte[] chunk = new byte[100_003];
            for (int sent = 0; sent < total;)
            {
                int n = Math.Min(chunk.Length, total - sent);
                random.NextBytes(chunk);
                sentHash.AppendData(chunk, 0, n);
                FlushResult flushed = await stream.Output.WriteAsync(chunk.AsMemory(0, n));
                Assert.False(flushed.IsCompleted);
                sent += n;
            }
            await stream.Output.CompleteAsync();
        });

        var receivedHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long received = 0;
        while (true)
        {
            ReadResult result = await stream.Input.ReadAsync().AsTask().WaitAsync(Patience);
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                receivedHash.AppendData(segment.Span);
            }
            received += result.Buffer.Length;
            stream.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }
        await send.WaitAsync(Patience);
        Assert.Equal(total, received);
        Assert.Equal(sentHash.GetHashAndReset(), receivedHash.GetHashAndReset());
    }

    [Fact]
    public async Task StalledReader_OnOneStream_DoesNotBlockAnotherStream()
    {
        var stalledSent = new TaskCompletionSource<long>();
        long stalledBytes = 0;
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            HboneStream stream = await request.AcceptAsync();
            if (request.Authority == "10.0.0.1:1")
            {
                // Flood a client that never reads this stream.
                byte[] chunk = new byte[64 * 1024];
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                try
                {
                    while (!(await stream.Output.WriteAsync(chunk, cts.Token)).IsCompleted)
                    {
                        Interlocked.Add(ref stalledBytes, chunk.Length);
                    }
                }
                catch (OperationCanceledException)
                {
                }
                stalledSent.TrySetResult(Interlocked.Read(ref stalledBytes));
                stream.Reset();
                return;
            }
            await EchoAsync(stream);
        });

        HboneStream stalled = await tunnel.ConnectAsync("10.0.0.1:1");
        await Task.Delay(300); // let the flood fill the stalled stream's window

        HboneStream lively = await tunnel.ConnectAsync("10.0.0.1:2");
        byte[] payload = RandomNumberGenerator.GetBytes(2 * 1024 * 1024);
        Task<byte[]> echoed = ReadToEndAsync(lively.Input);
        await lively.Output.WriteAsync(payload);
        await lively.Output.CompleteAsync();
        Assert.Equal(payload, await echoed.WaitAsync(TimeSpan.FromSeconds(10)));

        // The stalled stream got its window (4 MiB) plus what the send buffer holds, no more.
        long written = await stalledSent.Task.WaitAsync(Patience);
        Assert.InRange(written, 4L * 1024 * 1024 - 64 * 1024, 4L * 1024 * 1024 + 2 * QuietSettings.StreamSendBuffer + 64 * 1024);
        GC.KeepAlive(stalled);
    }

    [Fact]
    public async Task ConsumingData_ReturnsWindow_SoMoreThanOneWindowFlows()
    {
        // 3 windows' worth with the default 64 KiB-ish flow control forced small.
        var small = QuietSettings with { StreamWindow = 65_535, ConnectionWindow = 65_535 };
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, small, small);
        HboneStream stream = await tunnel.ConnectAsync();
        byte[] payload = RandomNumberGenerator.GetBytes(3 * 65_535 + 17);
        Task<byte[]> echoed = ReadToEndAsync(stream.Input);
        await stream.Output.WriteAsync(payload);
        await stream.Output.CompleteAsync();
        Assert.Equal(payload, await echoed.WaitAsync(Patience));
    }

    [Fact]
    public async Task Keepalive_PeerThatStopsAnswering_FailsTheClientConnection()
    {
        var (clientStream, serverStream) = await SocketPairAsync();
        using (serverStream)
        {
            // A "server" that sends a valid SETTINGS frame and then never reads or answers anything.
            await serverStream.WriteAsync(new byte[] { 0, 0, 0, 4, 0, 0, 0, 0, 0 });
            await using var client = await HboneClientConnection.StartAsync(clientStream,
                new HboneSettings { KeepaliveInterval = TimeSpan.FromMilliseconds(200), KeepaliveTimeout = TimeSpan.FromMilliseconds(300) },
                CancellationToken.None);
            var error = await Assert.ThrowsAsync<HboneException>(() => client.Completion.WaitAsync(Patience));
            Assert.Contains("keepalive", error.Message);
            Assert.False(client.CanOpenStream);
        }
    }

    [Fact]
    public async Task StreamOpenWhenItsConnectionEnds_SaysWhy_AStreamThatEndedBeforeSaysNothing()
    {
        var (clientStream, serverStream) = await SocketPairAsync();
        using var stop = new CancellationTokenSource();
        var serverHeld = new TaskCompletionSource<HboneStream>(TaskCreationOptions.RunContinuationsAsynchronously);
        Task server = HboneServer.RunConnectionAsync(serverStream, async request =>
        {
            if (request.Authority == "10.0.0.1:7")
            {
                await EchoHandler(request);
                return;
            }

            var held = await request.AcceptAsync();
            serverHeld.SetResult(held);
            await Task.Delay(Timeout.Infinite, request.Aborted).ContinueWith(_ => { });
        }, QuietSettings, stop.Token);
        await using var client = await HboneClientConnection.StartAsync(clientStream, QuietSettings, CancellationToken.None);

        var finished = await client.ConnectAsync("10.0.0.1:7", [], CancellationToken.None).WaitAsync(Patience);
        await finished.Output.CompleteAsync();
        await ReadToEndAsync(finished.Input).WaitAsync(Patience);
        var open = await client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None).WaitAsync(Patience);
        var serverSide = await serverHeld.Task.WaitAsync(Patience);

        stop.Cancel();
        await Task.Delay(Timeout.Infinite, open.Aborted).ContinueWith(_ => { }).WaitAsync(Patience);

        Assert.Null(finished.ConnectionLoss);
        Assert.NotNull(open.ConnectionLoss);
        Assert.NotNull(serverSide.ConnectionLoss);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => server.WaitAsync(Patience));
    }

    [Fact]
    public async Task Keepalive_AnsweringPeer_KeepsTheConnection()
    {
        var fast = new HboneSettings { KeepaliveInterval = TimeSpan.FromMilliseconds(100), KeepaliveTimeout = TimeSpan.FromSeconds(5) };
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, fast, fast);
        await Task.Delay(700);
        Assert.False(tunnel.Client.Completion.IsCompleted);
        HboneStream stream = await tunnel.ConnectAsync();
        await stream.Output.CompleteAsync();
        await ReadToEndAsync(stream.Input).WaitAsync(Patience);
    }

    internal static async Task<T> WaitForAsync<T>(Func<T> read, T expected)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!EqualityComparer<T>.Default.Equals(read(), expected) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        return read();
    }
}
