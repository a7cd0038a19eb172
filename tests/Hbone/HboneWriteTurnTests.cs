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
        byte[] first = RandomBytes(1000);
        byte[] second = RandomBytes(20_000);
        byte[] third = RandomBytes(HboneStream.RecordAlignedSend); // a relay's full read: four frames, a buffer of their own
        await using Held held = await HoldAFlushAsync(first);

        // B's writes complete while A's flush still waits: handed over, not queued behind the lock.
        await held.B.SendAsync(second).AsTask().WaitAsync(Patience);
        await held.B.SendAsync(third).AsTask().WaitAsync(Patience);
        Assert.False(held.SendA.IsCompleted, "A's write returned while its flush could not reach the transport");
        Assert.Equal(2, held.Counters.HandedWrites);

        await held.OpenAsync();
        Assert.Equal(first, await ReadExactlyAsync(held.A.Input, first.Length).WaitAsync(Patience));
        Assert.Equal(second.Concat(third).ToArray(), await ReadExactlyAsync(held.B.Input, second.Length + third.Length).WaitAsync(Patience));

        // The stream goes on as any other: its end arrives after everything it sent.
        await held.B.EndOutputAsync();
        Assert.Empty(await ReadToEndAsync(held.B.Input).WaitAsync(Patience));
    }

    [Fact]
    public async Task WhatWaitsForTheFlushingWriter_IsBounded_AndAWritePastTheBoundWaitsItsTurn()
    {
        await using Held held = await HoldAFlushAsync(RandomBytes(100));

        var (sent, past) = await HandUntilOneWaitsAsync(held.B, Http2FrameWriter.MaxHandedChunks);
        Assert.Equal(Http2FrameWriter.MaxHandedChunks, held.Counters.HandedWrites);

        await held.OpenAsync();
        await past.WaitAsync(Patience);
        Assert.Equal(100, (await ReadExactlyAsync(held.A.Input, 100).WaitAsync(Patience)).Length);
        Assert.Equal(sent, await ReadExactlyAsync(held.B.Input, sent.Length).WaitAsync(Patience));
    }

    [Fact]
    public async Task TheProcessBudgetOfHandedBuffers_BoundsItOverEveryConnection_AndComesBackAfterTheFlush()
    {
        // A budget of two buffers for the whole process (the agent's is 256): fewer than one connection may hold.
        var counters = new HboneCounters { MaxHandedChunks = 2 };
        await using Held held = await HoldAFlushAsync(RandomBytes(100), counters);

        var (sent, past) = await HandUntilOneWaitsAsync(held.B, 2);
        Assert.Equal(2, counters.HandedChunks);
        Assert.Equal(2, counters.HandedWrites);

        await held.OpenAsync();
        await past.WaitAsync(Patience);
        Assert.Equal(sent, await ReadExactlyAsync(held.B.Input, sent.Length).WaitAsync(Patience));
        Assert.Equal(0, counters.HandedChunks);
    }

    [Fact]
    public Task HandedWrites_CountedByTheAgent_ShowInMetrics() =>
        Weft.Tests.Telemetry.MeshMetricsTests.AssertProcessCounterExportedAsync(
            "weft_hbone_writes_handed_total", HboneCounters.Process.WriteHanded, () => HboneCounters.Process.HandedWrites);

    [Fact]
    public async Task AStreamResetWhileItsDataWaits_SendsNoneOfIt_AndTheOtherStreamsGoOn()
    {
        byte[] first = RandomBytes(5000);
        await using Held held = await HoldAFlushAsync(first);
        await held.B.SendAsync(RandomBytes(5000)).AsTask().WaitAsync(Patience);
        Assert.Equal(1, held.Counters.HandedWrites);

        // B is given up (RST_STREAM queued) before the frames handed for it could be written.
        await held.B.DisposeAsync().AsTask().WaitAsync(Patience);
        await held.OpenAsync();
        Assert.Equal(first, await ReadExactlyAsync(held.A.Input, first.Length).WaitAsync(Patience));

        // What the client put on the wire: B's RST_STREAM, and not one DATA frame of B.
        int b = held.B.StreamId;
        await WaitUntilAsync(() => Frames(held.Transport.Written()).Any(f => f.StreamId == b && f.Type == FrameType.RstStream));
        var ofB = Frames(held.Transport.Written()).Where(f => f.StreamId == b).Select(f => f.Type).ToList();
        Assert.DoesNotContain(FrameType.Data, ofB);
        Assert.Contains(FrameType.RstStream, ofB);
    }

    /// <summary>
    /// Two streams on one tunnel that send straight from their callers' buffers, and A's first write held in the
    /// transport: its flush keeps the connection's write lock until <see cref="Held.OpenAsync"/>.
    /// </summary>
    /// <param name="counters">The client's counters and budget of handed buffers; the test's own by default.</param>
    private static async Task<Held> HoldAFlushAsync(byte[] first, HboneCounters? counters = null)
    {
        counters ??= new HboneCounters();
        GatedStream? transport = null;
        var settings = new HboneSettings { KeepaliveInterval = Timeout.InfiniteTimeSpan, Counters = counters };
        LoopbackTunnel tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientSettings: settings, clientTransport: socket => transport = new GatedStream(socket));
        HboneStream a = await tunnel.ConnectAsync();
        HboneStream b = await tunnel.ConnectAsync();
        a.SendDirectly();
        b.SendDirectly();
        Task stuck = transport!.HoldWrites();
        Task sendA = a.SendAsync(first).AsTask();
        await stuck.WaitAsync(Patience);
        return new Held(tunnel, counters, transport, a, b, sendA);
    }

    /// <summary>
    /// Writes of 60,000 bytes, each filling most of one buffer once framed: <paramref name="handed"/> return at once,
    /// the next cannot be handed over and waits for the lock, which the held flush keeps.
    /// </summary>
    private static async Task<(byte[] Sent, Task Past)> HandUntilOneWaitsAsync(HboneStream stream, int handed)
    {
        var sent = new List<byte>();
        for (int i = 0; i < handed; i++)
        {
            byte[] chunk = RandomBytes(60_000);
            await stream.SendAsync(chunk).AsTask().WaitAsync(Patience);
            sent.AddRange(chunk);
        }
        byte[] past = RandomBytes(60_000);
        Task sendPast = stream.SendAsync(past).AsTask();
        sent.AddRange(past);
        await Task.Delay(300);
        Assert.False(sendPast.IsCompleted, "a write past the bound returned while the transport was held");
        return (sent.ToArray(), sendPast);
    }

    private sealed record Held(LoopbackTunnel Tunnel, HboneCounters Counters, GatedStream Transport, HboneStream A, HboneStream B, Task SendA) : IAsyncDisposable
    {
        /// <summary>Lets the transport's writes through; A's write completes.</summary>
        public async Task OpenAsync()
        {
            Transport.Open();
            await SendA.WaitAsync(Patience);
        }

        public async ValueTask DisposeAsync()
        {
            Transport.Open();
            await A.DisposeAsync();
            await B.DisposeAsync();
            await Tunnel.DisposeAsync();
        }
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
