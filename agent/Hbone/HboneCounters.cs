namespace Weft.Hbone;

/// <summary>
/// What the HBONE server refused to hold for its peers and what writers handed each other, for /metrics, and the
/// budget of buffers those hand-overs may hold (<see cref="MaxHandedChunks"/>). Thread-safe; one instance is
/// shared by every connection that uses the same <see cref="HboneSettings"/> (the process-wide
/// <see cref="Process"/> unless a caller passes its own).
/// </summary>
internal sealed class HboneCounters
{
    // A refusal storm writes one line per interval, not one per stream.
    private static readonly TimeSpan LogInterval = TimeSpan.FromSeconds(10);

    private readonly RateLimitedWarning _refusals = new("hbone", LogInterval);
    private long _refusedStreams;

    /// <summary>The agent's counters (what MeshMetrics exports).</summary>
    public static HboneCounters Process { get; } = new();

    /// <summary>CONNECT streams refused with RST_STREAM(REFUSED_STREAM) because their connection was at its concurrent-stream limit.</summary>
    public long RefusedStreams => Interlocked.Read(ref _refusedStreams);

    /// <summary>
    /// Buffers of DATA handed to a flushing writer that may be out at once over every connection using these counters:
    /// what a process holds when many tunnels' peers stop reading (each connection holds at most
    /// <see cref="Internal.Http2FrameWriter.MaxHandedChunks"/>). 256 buffers of 64 KiB, 16 MiB.
    /// </summary>
    public int MaxHandedChunks { get; init; } = 256;

    private int _handedChunks;
    private long _handedWrites;

    /// <summary>Buffers of handed DATA out now.</summary>
    public int HandedChunks => Volatile.Read(ref _handedChunks);

    /// <summary>DATA writes that found their connection's write lock taken and were handed to the writer holding it.</summary>
    public long HandedWrites => Interlocked.Read(ref _handedWrites);

    internal bool TryTakeHandedChunk() => Limit.TryTake(ref _handedChunks, MaxHandedChunks);

    internal void ReturnHandedChunks(int count) => Interlocked.Add(ref _handedChunks, -count);

    internal void WriteHanded() => Interlocked.Increment(ref _handedWrites);

    private long _joinedFrames;

    /// <summary>
    /// Inbound DATA frames whose payload reached the stream's consumer joined to the frame before it (read together, same
    /// stream): a send to the app's socket saved each.
    /// </summary>
    public long JoinedFrames => Interlocked.Read(ref _joinedFrames);

    internal void FrameJoined() => Interlocked.Increment(ref _joinedFrames);

    internal void StreamRefused(int limit)
    {
        Interlocked.Increment(ref _refusedStreams);
        _refusals.Warn(passedOver => $"refused {passedOver + 1} CONNECT stream(s) with REFUSED_STREAM: a connection reached its limit of {limit} concurrent streams (total {RefusedStreams}; next report in {LogInterval.TotalSeconds:0} s at most)");
    }
}
