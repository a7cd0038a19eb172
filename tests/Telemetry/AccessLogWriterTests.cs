using System.Collections.Concurrent;
using Weft.Telemetry;

namespace Weft.Tests.Telemetry;

public class AccessLogWriterTests
{
    [Fact]
    public async Task LinesFromManyThreads_AllReachTheOutput_WholeAndOncePerLine()
    {
        var output = new StringWriter();
        var log = new AccessLogWriter(output);
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            for (var i = 0; i < 500; i++)
            {
                log.Write($"thread {t} line {i}");
            }
        })));

        await log.DisposeAsync();

        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4000, lines.Length);
        Assert.Equal(4000, lines.Distinct().Count());
        Assert.All(lines, l => Assert.Matches(@"^thread \d line \d+$", l));
        Assert.Equal(0, log.Dropped);
    }

    [Fact]
    public async Task StuckReader_NeverHoldsUpTheClosingThread_AndDropsOnlyPastCapacity_ThenWritesTheRest()
    {
        var output = new BlockingWriter();
        var log = new AccessLogWriter(output);
        const int Extra = 100;

        // Every Write returns although the output is stuck in its first WriteLine.
        await Task.Run(() =>
        {
            for (var i = 0; i < AccessLogWriter.Capacity + Extra; i++)
            {
                log.Write($"line {i}");
            }
        }).WaitAsync(TimeSpan.FromSeconds(30));

        // The writer may or may not have taken the first line off the queue before the rest came.
        Assert.InRange(log.Dropped, Extra - 1, Extra);
        output.Release.Set();
        await log.DisposeAsync();
        Assert.Equal(AccessLogWriter.Capacity + Extra - log.Dropped, output.Lines.Count);
        Assert.Equal("line 0", output.Lines.First());
    }

    [Fact]
    public async Task LinesAfterTheFinalFlush_AreIgnored_NotCountedAsDropped()
    {
        var output = new StringWriter();
        var log = new AccessLogWriter(output);
        log.Write("before");
        await log.DisposeAsync();
        log.Write("after");
        Assert.Equal("before", output.ToString().Trim());
        Assert.Equal(0, log.Dropped);
    }

    private sealed class BlockingWriter : TextWriter
    {
        public ManualResetEventSlim Release { get; } = new();

        public ConcurrentQueue<string> Lines { get; } = new();

        public override System.Text.Encoding Encoding => System.Text.Encoding.UTF8;

        public override void WriteLine(string? value)
        {
            Release.Wait();
            Lines.Enqueue(value ?? "");
        }
    }
}
