using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// A tunnel that dies takes its streams' app connections with it. A python3-h2 client with a tester SVID
/// (in demo/x1, outside the mesh) opens streams through b1's agent (15008) to an app in b1 that holds
/// every connection (never reads, writes or closes), half-closes every other stream, then resets the
/// tunnel's TCP connection: the app must see each of its connections reset within a second, and the
/// agent's descriptors must return to their idle figure within five.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TunnelTeardownTests(ITestOutputHelper output)
{
    private const int AppPort = 8090;
    private static readonly TimeSpan AppBound = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan DescriptorBound = TimeSpan.FromSeconds(5);

    [PrivilegedFact]
    public async Task TunnelReset_WithTwentyStreamsOpen_ClosesEveryAppConnectionWithinASecond_AndDescriptorsReturnToIdle()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true);
        var b1 = mesh.Cluster.Pod("demo", "b1");
        await using var app = b1.StartProcess(TunnelPeer.Python, HoldApp(), AppPort.ToString());
        await app.WaitForStdoutLineAsync(l => l.Contains("\"listening\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");
        var agent = mesh.Agent("node2");

        // A first, small round warms the agent up (TLS, thread pool, flow table); idle is measured after it.
        await HoldAndResetAsync(mesh, app, tester, streams: 2);
        var idle = await SettledDescriptorsAsync(agent.Pid);
        output.WriteLine($"agent descriptors when idle: {idle}");

        var round = await HoldAndResetAsync(mesh, app, tester, streams: 20, agentPid: agent.Pid);
        output.WriteLine($"held: {round.Held} app connections, agent at {round.DescriptorsWhileHeld} descriptors; "
            + $"app saw the last one reset {round.AppClosedAfter.TotalMilliseconds:0} ms after the tunnel reset");
        Assert.True(round.DescriptorsWhileHeld >= idle + 20, $"the agent held {round.DescriptorsWhileHeld} descriptors with 20 streams open (idle {idle}): the measurement sees nothing");
        Assert.True(round.AppClosedAfter < AppBound, $"the app's connections closed {round.AppClosedAfter.TotalMilliseconds:0} ms after the tunnel reset");

        var clock = Stopwatch.StartNew();
        int descriptors;
        while ((descriptors = Descriptors(agent.Pid)) > idle && clock.Elapsed < DescriptorBound + DescriptorBound)
        {
            await Task.Delay(50);
        }
        output.WriteLine($"agent descriptors back to {descriptors} (idle {idle}) {clock.ElapsedMilliseconds} ms after the app saw its connections close");
        Assert.True(descriptors <= idle, $"the agent still holds {descriptors} descriptors (idle {idle})");
        Assert.True(clock.Elapsed + round.AppClosedAfter < DescriptorBound, $"descriptors returned to idle only after {(clock.Elapsed + round.AppClosedAfter).TotalMilliseconds:0} ms");
        Assert.False(agent.HasExited, agent.Stderr);
    }

    private sealed record Round(int Held, int DescriptorsWhileHeld, TimeSpan AppClosedAfter);

    /// <summary>Opens the streams, checks the app holds one connection per stream, resets the tunnel and times the app's closes.</summary>
    private async Task<Round> HoldAndResetAsync(MeshCluster mesh, ManagedProcess app, SvidFiles svid, int streams, int? agentPid = null)
    {
        var b1 = mesh.Cluster.Pod("demo", "b1");
        var trigger = Path.Combine(svid.Directory, $"kill-{streams}");
        string[] args = [TunnelPeer.Script(), "hold", $"{b1.Address}:15008", $"{b1.Address}:{AppPort}", "--streams", streams.ToString(),
            "--kill-when", trigger, "--cert", svid.CertificatePath, "--key", svid.KeyPath, "--ca", svid.TrustBundlePath, "--timeout", "90"];
        var linesBefore = app.StdoutLines.Count;
        await using var peer = mesh.Cluster.Pod("demo", "x1").StartProcess(TunnelPeer.Python, args);
        var held = await peer.WaitForStdoutLineAsync(l => l.Contains("\"held\"", StringComparison.Ordinal), TimeSpan.FromMinutes(1));
        Assert.True(JsonDocument.Parse(held).RootElement.GetProperty("ok").GetBoolean(), held);

        // Every stream reached the app: it holds one connection per stream.
        await WaitUntilAsync(() => OpenCount(app, linesBefore) == streams, $"the app never held {streams} connections: {string.Join('\n', app.StdoutLines.Skip(linesBefore))}");
        var descriptors = agentPid is { } pid ? Descriptors(pid) : 0;

        File.WriteAllText(trigger, "");
        var killedLine = await peer.WaitForStdoutLineAsync(l => l.Contains("\"killed\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        var killed = JsonDocument.Parse(killedLine).RootElement;
        Assert.True(killed.GetProperty("ok").GetBoolean(), killedLine);
        var killedAt = killed.GetProperty("t").GetDouble();

        var linesAtKill = app.StdoutLines.Count;
        await WaitUntilAsync(() => OpenCount(app, linesBefore) == 0, $"the app still holds connections after the tunnel reset: {string.Join('\n', app.StdoutLines.Skip(linesBefore))}");
        var closedAt = app.StdoutLines.Skip(linesBefore).Select(l => JsonDocument.Parse(l).RootElement)
            .Last(e => e.TryGetProperty("open", out var open) && open.GetInt32() == 0).GetProperty("t").GetDouble();
        Assert.Equal(0, await peer.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        return new Round(streams, descriptors, TimeSpan.FromSeconds(Math.Max(0, closedAt - killedAt)));
    }

    /// <summary>The app's latest count of connections it still holds, from its lines since <paramref name="skip"/>; -1 before any.</summary>
    private static int OpenCount(ManagedProcess app, int skip)
    {
        var last = -1;
        foreach (var line in app.StdoutLines.Skip(skip))
        {
            using var document = JsonDocument.Parse(line);
            if (document.RootElement.TryGetProperty("open", out var open))
            {
                last = open.GetInt32();
            }
        }

        return last;
    }

    private static int Descriptors(int pid) => Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length;

    /// <summary>The descriptor count once it has held still for a second (nothing left closing).</summary>
    private static async Task<int> SettledDescriptorsAsync(int pid)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        var last = Descriptors(pid);
        var stableSince = DateTime.UtcNow;
        while (DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
            var now = Descriptors(pid);
            if (now != last)
            {
                last = now;
                stableSince = DateTime.UtcNow;
            }
            else if (DateTime.UtcNow - stableSince > TimeSpan.FromSeconds(1))
            {
                return now;
            }
        }

        return last;
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string failure)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure);
            await Task.Delay(20);
        }
    }

    private static string HoldApp([CallerFilePath] string here = "") =>
        Path.Combine(Path.GetDirectoryName(here)!, "peers", "hold_app.py");
}
