using System.Buffers;
using System.Net.Sockets;
using Weft;
using Weft.Hbone;
using Weft.Hbone.Internal;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// Streams sharing a tunnel while one of them flushes: the others' DATA is handed to the flushing writer instead of
/// waiting for the lock, stays in order, is bounded, and never follows the stream's RST_STREAM.
/// </summary>
public class HboneWriteTurnTests
{
    [Fact]
    public async Task DataOfAnotherStream_WhileAFlushWaitsOnTheTransport_ReturnsAtOnceAndArrivesInOrder()
    {
        GatedStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket => transport = new GatedStream(socket));
        HboneStream a = await tunnel.ConnectAsync();
        HboneStream b = await tunnel.ConnectAsync();
        a.SendDirectly();
        b.SendDirectly();
        byte[] first = RandomBytes(1000);
        byte[] second = RandomBytes(20_000);
        byte[] third = RandomBytes(DataBuffers.Size); // a relay's full read: more than one buffer once framed

        // A's flush stops in the transport, holding the connection's write lock.
        Task stuck = transport!.HoldWrites();
        ValueTask sendA = a.SendAsync(first);
        await stuck.WaitAsync(Patience);

        // B's writes complete while A's flush still waits: handed over, not queued behind the lock.
        await b.SendAsync(second).AsTask().WaitAsync(Patience);
        await b.SendAsync(third).AsTask().WaitAsync(Patience);
        Assert.False(sendA.IsCompleted, "A's write returned while its flush could not reach the transport");
        Assert.Equal(2, tunnel.Client.HandedWrites);

        transport.Open();
        await sendA;
        Assert.Equal(first, await ReadExactlyAsync(a.Input, first.Length).WaitAsync(Patience));
        Assert.Equal(second.Concat(third).ToArray(), await ReadExactlyAsync(b.Input, second.Length + third.Length).WaitAsync(Patience));

        // The stream goes on as any other: its end arrives after everything it sent.
        await b.EndOutputAsync();
        Assert.Empty(await ReadToEndAsync(b.Input).WaitAsync(Patience));
        await a.DisposeAsync();
        await b.DisposeAsync();
    }

    [Fact]
    public async Task WhatWaitsForTheFlushingWriter_IsBounded_AndAWritePastTheBoundWaitsItsTurn()
    {
        GatedStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket => transport = new GatedStream(socket));
        HboneStream a = await tunnel.ConnectAsync();
        HboneStream b = await tunnel.ConnectAsync();
        a.SendDirectly();
        b.SendDirectly();

        Task stuck = transport!.HoldWrites();
        ValueTask sendA = a.SendAsync(RandomBytes(100));
        await stuck.WaitAsync(Patience);

        // Each write of 60,000 bytes fills most of one buffer: as many as the bound allows are handed over.
        var sent = new List<byte>();
        for (int i = 0; i < Http2FrameWriter.MaxHandedChunks; i++)
        {
            byte[] chunk = RandomBytes(60_000);
            await b.SendAsync(chunk).AsTask().WaitAsync(Patience);
            sent.AddRange(chunk);
        }
        byte[] past = RandomBytes(60_000);
        ValueTask sendPast = b.SendAsync(past);
        sent.AddRange(past);

        // The next one cannot be handed over, so it waits for the lock, which A's flush holds until the transport opens.
        await Task.Delay(300);
        Assert.False(sendPast.IsCompleted, "a write past the bound returned while the transport was closed");
        Assert.Equal(Http2FrameWriter.MaxHandedChunks, tunnel.Client.HandedWrites);

        transport.Open();
        await sendA;
        await sendPast.AsTask().WaitAsync(Patience);
        Assert.Equal(100, (await ReadExactlyAsync(a.Input, 100).WaitAsync(Patience)).Length);
        Assert.Equal(sent.ToArray(), await ReadExactlyAsync(b.Input, sent.Count).WaitAsync(Patience));
        await a.DisposeAsync();
        await b.DisposeAsync();
    }

    [Fact]
    public async Task TheProcessBudgetOfHandedBuffers_BoundsItOverEveryConnection_AndComesBackAfterTheFlush()
    {
        // A budget of two buffers for the whole process (the agent's is 256): fewer than one connection may hold.
        var counters = new HboneCounters { MaxHandedChunks = 2 };
        var settings = new HboneSettings { KeepaliveInterval = Timeout.InfiniteTimeSpan, Counters = counters };
        GatedStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientSettings: settings, clientTransport: socket => transport = new GatedStream(socket));
        HboneStream a = await tunnel.ConnectAsync();
        HboneStream b = await tunnel.ConnectAsync();
        a.SendDirectly();
        b.SendDirectly();

        Task stuck = transport!.HoldWrites();
        ValueTask sendA = a.SendAsync(RandomBytes(100));
        await stuck.WaitAsync(Patience);
        var sent = new List<byte>();
        for (int i = 0; i < 2; i++)
        {
            byte[] chunk = RandomBytes(60_000);
            await b.SendAsync(chunk).AsTask().WaitAsync(Patience);
            sent.AddRange(chunk);
        }
        byte[] past = RandomBytes(60_000);
        ValueTask sendPast = b.SendAsync(past);
        sent.AddRange(past);

        await Task.Delay(300);
        Assert.False(sendPast.IsCompleted, "a write past the process's budget returned while the transport was closed");
        Assert.Equal(2, counters.HandedChunks);
        Assert.Equal(2, counters.HandedWrites);

        transport.Open();
        await sendA;
        await sendPast.AsTask().WaitAsync(Patience);
        Assert.Equal(sent.ToArray(), await ReadExactlyAsync(b.Input, sent.Count).WaitAsync(Patience));
        Assert.Equal(0, counters.HandedChunks);
        await a.DisposeAsync();
        await b.DisposeAsync();
    }

    [Fact]
    public async Task HandedWrites_CountedByTheAgent_ShowInMetrics()
    {
        var (_, metrics) = Weft.Tests.Telemetry.MeshMetricsTests.NewMetrics();
        HboneCounters.Process.WriteHanded();
        long counted = HboneCounters.Process.HandedWrites;

        string scrape = await metrics.RenderAsync();

        // Other tests in this process may hand writes too: the exported total is at least ours.
        string line = scrape.Split('\n').Single(l => l.StartsWith("weft_hbone_writes_handed_total ", StringComparison.Ordinal));
        double exported = double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(exported >= counted, $"exported {exported}, counted {counted}");
    }

    [Fact]
    public async Task AStreamResetWhileItsDataWaits_SendsNoneOfIt_AndTheOtherStreamsGoOn()
    {
        GatedStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket => transport = new GatedStream(socket));
        HboneStream a = await tunnel.ConnectAsync();
        HboneStream b = await tunnel.ConnectAsync();
        a.SendDirectly();
        b.SendDirectly();

        Task stuck = transport!.HoldWrites();
        byte[] first = RandomBytes(5000);
        ValueTask sendA = a.SendAsync(first);
        await stuck.WaitAsync(Patience);
        await b.SendAsync(RandomBytes(5000)).AsTask().WaitAsync(Patience);
        Assert.Equal(1, tunnel.Client.HandedWrites);

        // B is given up (RST_STREAM queued) before the frames handed for it could be written.
        await b.DisposeAsync().AsTask().WaitAsync(Patience);
        transport.Open();
        await sendA;
        Assert.Equal(first, await ReadExactlyAsync(a.Input, first.Length).WaitAsync(Patience));
        await a.DisposeAsync();

        // What the client put on the wire: B's RST_STREAM, and not one DATA frame of B.
        await WaitUntilAsync(() => Frames(transport.Written()).Any(f => f.StreamId == b.StreamId && f.Type == FrameType.RstStream));
        var ofB = Frames(transport.Written()).Where(f => f.StreamId == b.StreamId).Select(f => f.Type).ToList();
        Assert.DoesNotContain(FrameType.Data, ofB);
        Assert.Contains(FrameType.RstStream, ofB);
    }

    private static byte[] RandomBytes(int count)
    {
        byte[] bytes = new byte[count];
        Random.Shared.NextBytes(bytes);
        return bytes;
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(Patience);
        while (!condition())
        {
            await Task.Delay(20, timeout.Token);
        }
    }

    /// <summary>The frame headers in what a client wrote, after the connection preface.</summary>
    private static List<FrameHeader> Frames(byte[] written)
    {
        var frames = new List<FrameHeader>();
        var rest = new ReadOnlySequence<byte>(written).Slice(FrameHeader.ClientPreface.Length);
        while (FrameHeader.TryRead(rest, out FrameHeader header) && rest.Length >= FrameHeader.Size + header.Length)
        {
            frames.Add(header);
            rest = rest.Slice(FrameHeader.Size + header.Length);
        }
        return frames;
    }

    /// <summary>The client's real socket stream, whose writes a test can hold back, recording all it sent.</summary>
    private sealed class GatedStream(NetworkStream inner) : TransportWrapper(inner)
    {
        private readonly Lock _sync = new();
        private readonly MemoryStream _written = new();
        private TaskCompletionSource? _gate;
        private TaskCompletionSource? _entered;

        /// <summary>Holds back the writes from now on; the task completes once a write waits behind the gate.</summary>
        public Task HoldWrites()
        {
            lock (_sync)
            {
                _gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                return _entered.Task;
            }
        }

        public void Open()
        {
            lock (_sync)
            {
                _gate?.TrySetResult();
                _gate = null;
            }
        }

        public byte[] Written()
        {
            lock (_sync)
            {
                return _written.ToArray();
            }
        }

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Task? gate;
            lock (_sync)
            {
                gate = _gate?.Task;
                if (gate is not null)
                {
                    _entered?.TrySetResult();
                }
            }
            if (gate is not null)
            {
                await gate.WaitAsync(cancellationToken);
            }
            lock (_sync)
            {
                _written.Write(buffer.Span);
            }
            await Inner.WriteAsync(buffer, cancellationToken);
        }

        public override void Write(byte[] buffer, int offset, int count) =>
            WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    }
}
