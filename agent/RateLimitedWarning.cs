namespace Weft;

/// <summary>
/// A warning at most once per interval, told how many events were passed over since the last line:
/// a flood of refusals must not become a flood of log lines (the log is work too). Thread-safe.
/// </summary>
internal sealed class RateLimitedWarning(string component, TimeSpan interval)
{
    private long _nextLineAt;
    private long _suppressed;

    /// <param name="message">The line, given the number of events passed over since the previous line.</param>
    public void Warn(Func<long, string> message)
    {
        var now = Environment.TickCount64;
        var next = Volatile.Read(ref _nextLineAt);
        if (now < next || Interlocked.CompareExchange(ref _nextLineAt, now + (long)interval.TotalMilliseconds, next) != next)
        {
            Interlocked.Increment(ref _suppressed);
            return;
        }

        Log.Warn(component, message(Interlocked.Exchange(ref _suppressed, 0)));
    }
}
