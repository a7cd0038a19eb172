using System.Threading.Channels;

namespace Weft.Telemetry;

/// <summary>
/// Writes access-log lines on a task of its own, so closing a connection never waits for stdout: the
/// closing thread queues the line, the writer writes what is queued and flushes once the queue is empty
/// (one write for a burst of closes, not one each). A reader that stops reading (a stuck log pipe)
/// costs at most <see cref="Capacity"/> lines of memory; past that lines are dropped and counted.
/// </summary>
internal sealed class AccessLogWriter : IAsyncDisposable
{
    public const int Capacity = 16_384;

    private readonly Channel<string> _lines = Channel.CreateBounded<string>(
        new BoundedChannelOptions(Capacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly RateLimitedWarning _failures = new("access-log", TimeSpan.FromSeconds(10));
    private readonly TextWriter _output;
    private readonly Task _run;
    private long _dropped;
    private volatile bool _completed;

    public AccessLogWriter(TextWriter output)
    {
        _output = output;
        _run = Task.Run(RunAsync);
    }

    /// <summary>Lines not written because <see cref="Capacity"/> lines were already waiting.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    public void Write(string line)
    {
        if (!_lines.Writer.TryWrite(line) && !_completed)
        {
            var dropped = Interlocked.Increment(ref _dropped);
            _failures.Warn(_ => $"the access log's reader is {Capacity} lines behind: dropped {dropped} line(s) so far");
        }
    }

    /// <summary>Writes what is queued, then stops.</summary>
    public async ValueTask DisposeAsync()
    {
        _completed = true;
        _lines.Writer.TryComplete();
        await _run.ConfigureAwait(false);
    }

    private async Task RunAsync()
    {
        var reader = _lines.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            try
            {
                while (reader.TryRead(out var line))
                {
                    _output.WriteLine(line);
                }

                _output.Flush();
            }
            catch (IOException e)
            {
                // stdout closed under us: the flow records stay in the table and the metrics; keep draining.
                _failures.Warn(passedOver => $"writing the access log failed: {e.Message} ({passedOver} more since the last report)");
            }
        }
    }
}
