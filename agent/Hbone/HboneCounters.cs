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

    private readonly RateLimitedWarning _refusals = new("hbone", LogInterval);
    private long _refusedStreams;

    /// <summary>The agent's counters (what MeshMetrics exports).</summary>
    public static HboneCounters Process { get; } = new();

    /// <summary>CONNECT streams refused with RST_STREAM(REFUSED_STREAM) because their connection was at its concurrent-stream limit.</summary>
    public long RefusedStreams => Interlocked.Read(ref _refusedStreams);

    internal void StreamRefused(int limit)
    {
        Interlocked.Increment(ref _refusedStreams);
        _refusals.Warn(passedOver => $"refused {passedOver + 1} CONNECT stream(s) with REFUSED_STREAM: a connection reached its limit of {limit} concurrent streams (total {RefusedStreams}; next report in {LogInterval.TotalSeconds:0} s at most)");
    }
}
