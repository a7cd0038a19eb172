using Weft.Bench;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// The soak suite (<c>weft-bench --suite soak</c>) for two minutes: mixed mTLS traffic while pods come and
/// go, a DENY policy flips, the CA rotates on disk and node2's agent is replaced; its invariants must hold.
/// Growth is judged as "not unbounded over the run": the settled samples' second half may not rise far
/// above their first (a slope from two minutes would be noise; the 30-minute bench prints the slopes).
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class SoakTests(ITestOutputHelper output)
{
    [PrivilegedFact]
    public async Task TwoMinutesOfMixedTrafficUnderChurn_CorruptNoByte_FailNoConnectionButDenied_GrowNothing_LeaveNothing()
    {
        var report = await SoakBenchmark.RunAsync(TimeSpan.FromMinutes(2), Say, CancellationToken.None);
        output.WriteLine(report.Text());

        // The run did what it says: traffic, and every kind of change.
        Assert.True(report.OkConnections >= 300, $"only {report.OkConnections} connections went through: too little traffic to judge");
        Assert.True(report.PodsAdded >= 3 && report.PolicyFlipsOn >= 2 && report.CaRotations == 1 && report.AgentReplacements == 1, report.Text());
        Assert.True(report.Denied > 0, "the deny policy never refused a connection: the flips were not seen");

        Assert.Equal(0, report.CorruptedBytes);
        Assert.Equal(0, report.CorruptedTransfers);
        Assert.True(report.Failures.Count == 0, string.Join('\n', report.Failures));
        Assert.True(report.LeftBehind.Count == 0 && report.TeardownError is null, report.Text());

        var (fdsFirst, fdsSecond) = report.Halves(s => s.Fds);
        var (threadsFirst, threadsSecond) = report.Halves(s => s.Threads);
        var (rssFirst, rssSecond) = report.Halves(s => s.RssKib / 1024.0);
        Assert.True(fdsSecond <= fdsFirst + 64, $"descriptors grew from at most {fdsFirst} to {fdsSecond}");
        Assert.True(threadsSecond <= threadsFirst + 16, $"threads grew from at most {threadsFirst} to {threadsSecond}");
        Assert.True(rssSecond <= rssFirst + 64, $"RSS grew from at most {rssFirst:0} MiB to {rssSecond:0} MiB");
    }

    private void Say(string line)
    {
        try
        {
            output.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
            // a background loop's last line after the test ended
        }
    }
}
