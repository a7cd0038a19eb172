using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// A real agent's tunnel port caps concurrent streams per connection: python3-h2 with a tester SVID opens
/// more CONNECTs than the agent advertises, before its SETTINGS can arrive.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TunnelStreamLimitTests(ITestOutputHelper output)
{
    private const int RefusedStream = 0x7;

    [PrivilegedFact]
    public async Task StreamsPastTheAdvertisedHundred_AreRefusedWithRefusedStream_NeverReachTheApp_AndAreCounted()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true, "--metrics", ":15020");
        var b1 = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await TunnelPeer.StartEchoServerAsync(b1);
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");
        var agent = mesh.Agent("node2");

        var run = await TunnelPeer.RunAsync(mesh, "flood", [$"{b1.Address}:15008", $"{b1.Address}:8080"], tester, "--streams", "130");
        var flood = run.Single("flood");
        output.WriteLine(flood.ToString());

        Assert.Equal(100, flood.GetProperty("settings").GetProperty("MAX_CONCURRENT_STREAMS").GetInt32());
        Assert.Equal(100, flood.GetProperty("accepted").GetInt32());
        var codes = flood.GetProperty("reset_codes");
        Assert.True(codes.EnumerateObject().Count() == 1 && codes.GetProperty(RefusedStream.ToString()).GetInt32() == 30, run.ToString());
        Assert.True(flood.GetProperty("echoed").GetBoolean(), $"an accepted stream stopped working: {run}");
        Assert.False(flood.GetProperty("closed").GetBoolean(), $"the agent closed the whole connection: {run}");

        // Only the accepted streams did any work: one inbound record (and one app connection) each.
        await CaptureScopeTests.WaitUntilAsync(() => TunnelPeer.InboundFrom(agent, "tester").Count >= 100);
        await Task.Delay(500);
        Assert.Equal(100, TunnelPeer.InboundFrom(agent, "tester").Count);

        await using var curl = mesh.Cluster.Node("node2").StartProcess("curl", "-sS", "http://127.0.0.1:15020/metrics");
        Assert.Equal(0, await curl.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        var line = curl.StdoutLines.Single(l => l.StartsWith("weft_hbone_streams_refused_total ", StringComparison.Ordinal));
        Assert.Equal(30, double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains(agent.StderrLines, l => l.Contains("REFUSED_STREAM", StringComparison.Ordinal));
        Assert.False(agent.HasExited, agent.Stderr);
    }
}
