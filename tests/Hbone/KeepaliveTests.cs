using System.Collections.Concurrent;
using Weft.Hbone;
using Weft.Hbone.Internal;

namespace Weft.Tests.Hbone;

public class KeepaliveTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task UnansweredPing_EndsTheConnectionWithTheTimeout()
    {
        var pings = new ConcurrentQueue<ulong>();
        var timedOut = new TaskCompletionSource<HboneException>(TaskCreationOptions.RunContinuationsAsynchronously);
        var keepalive = new Keepalive(TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(100), pings.Enqueue, e => timedOut.TrySetResult(e));

        Task run = keepalive.RunAsync(CancellationToken.None);
        HboneException error = await timedOut.Task.WaitAsync(Patience);
        await run.WaitAsync(Patience);

        Assert.Contains("keepalive PING not acknowledged", error.Message);
        Assert.Equal([1UL], pings.ToArray());
    }

    [Fact]
    public async Task AnsweredPings_KeepItGoing_AndAnAckWithAnotherPayloadAnswersNothing()
    {
        var timedOut = new TaskCompletionSource<HboneException>(TaskCreationOptions.RunContinuationsAsynchronously);
        var pings = new ConcurrentQueue<ulong>();
        Keepalive? keepalive = null;
        keepalive = new Keepalive(TimeSpan.FromMilliseconds(10), TimeSpan.FromSeconds(10), payload =>
        {
            pings.Enqueue(payload);
            // A stray ACK first, then the right one: only the right one counts.
            keepalive!.OnPingAck(payload + 1000);
            if (payload < 5)
            {
                keepalive.OnPingAck(payload);
            }
        }, e => timedOut.TrySetResult(e));

        using var cts = new CancellationTokenSource();
        Task run = keepalive.RunAsync(cts.Token);
        // The fifth PING goes unanswered: the loop waits on it (its timeout is 10 s) instead of timing out.
        while (pings.Count < 5)
        {
            await Task.Delay(10);
            Assert.False(run.IsCompleted);
        }
        await Task.Delay(200);
        Assert.Equal([1UL, 2UL, 3UL, 4UL, 5UL], pings.ToArray());
        Assert.False(timedOut.Task.IsCompleted);

        keepalive.Stop();
        await run.WaitAsync(Patience);
        Assert.False(timedOut.Task.IsCompleted);
    }

    [Fact]
    public async Task DisabledKeepalive_NeverPings()
    {
        var keepalive = new Keepalive(Timeout.InfiniteTimeSpan, TimeSpan.FromSeconds(1), _ => throw new InvalidOperationException("no PING expected"), _ => { });
        Assert.False(keepalive.Enabled);
        await keepalive.RunAsync(CancellationToken.None).WaitAsync(Patience);
    }
}
