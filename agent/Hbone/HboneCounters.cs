namespace Weft.Hbone;

/// <summary>
/// What the HBONE server refused to hold for its peers, for /metrics. Thread-safe; one instance is
/// shared by every connection that uses the same <see cref="HboneSettings"/> (the process-wide
/// <see cref="Process"/> unless a caller passes its own).
/// </summary>
internal sealed class HboneCounters
{
    // A refusal storm writes one line per interval, not one per stream.
    private static readonly TimeSpan LogInterval = TimeSpan.FromSeconds(10);

    private long _refusedStreams;
    private long _refusedSinceLog;
    private long _lastLogTicks = long.MinValue;

    /// <summary>The agent's counters (what MeshMetrics exports).</summary>
    public static HboneCounters Process { get; } = new();

    /// <summary>CONNECT streams refused with RST_STREAM(REFUSED_STREAM) because their connection was at its concurrent-stream limit.</summary>
    public long RefusedStreams => Interlocked.Read(ref _refusedStreams);

    internal void StreamRefused(int limit)
    {
        Interlocked.Increment(ref _refusedStreams);
        long pending = Interlocked.Increment(ref _refusedSinceLog);
        long now = Environment.TickCount64;
        long last = Interlocked.Read(ref _lastLogTicks);
        if (last != long.MinValue && now - last < (long)LogInterval.TotalMilliseconds)
        {
            return;
        }
        if (Interlocked.CompareExchange(ref _lastLogTicks, now, last) != last)
        {
            return; // another thread logs this interval
        }
        pending = Interlocked.Exchange(ref _refusedSinceLog, 0);
        Log.Warn("hbone", $"refused {pending} CONNECT stream(s) with REFUSED_STREAM: a connection reached its limit of {limit} concurrent streams (total {RefusedStreams}; next report in {LogInterval.TotalSeconds:0} s at most)");
    }
}
