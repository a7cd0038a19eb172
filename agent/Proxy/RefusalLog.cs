namespace Weft.Proxy;

/// <summary>
/// A warning per refusal reason at most once per interval, saying how many were refused since the
/// last line: a flood of refusals must not become a flood of log lines (the log is work too).
/// </summary>
internal sealed class RefusalLog(TimeSpan interval)
{
    private readonly long[] _nextLineAt = new long[Enum.GetValues<InboundRefusal>().Length];
    private readonly long[] _suppressed = new long[Enum.GetValues<InboundRefusal>().Length];

    public void Refused(InboundRefusal reason, string detail)
    {
        var slot = (int)reason;
        var now = Environment.TickCount64;
        var next = Volatile.Read(ref _nextLineAt[slot]);
        if (now < next || Interlocked.CompareExchange(ref _nextLineAt[slot], now + (long)interval.TotalMilliseconds, next) != next)
        {
            Interlocked.Increment(ref _suppressed[slot]);
            return;
        }

        var earlier = Interlocked.Exchange(ref _suppressed[slot], 0);
        var more = earlier == 0 ? "" : $" ({earlier} more refused for this reason since the last line)";
        Log.Warn("proxy", $"inbound refused: {detail}{more}");
    }
}
