using Weft.Harness;

namespace Weft.Tests.Harness;

[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
public sealed class ClusterTeardownTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private static ClusterSpec TwoByTwo => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "a2")),
        new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("demo", "b2")));

    [PrivilegedFact]
    public async Task Dispose_RemovesNamespacesCgroupsAndEveryProcess_IncludingChildren()
    {
        var cluster = await NetnsCluster.CreateAsync(TwoByTwo);
        var pod = cluster.Pod("demo", "b2");
        var sleeper = pod.StartProcess("sleep", "600");
        // a child the harness never saw: it inherits the pod's cgroup and must die with the run
        var parent = pod.StartProcess("/bin/sh", "-c", "sleep 600 & echo $!; wait");
        var child = int.Parse(await parent.WaitForStdoutLineAsync(_ => true, Timeout));
        var agent = cluster.Node("node1").StartProcess("sleep", "600");
        Assert.Equal(pod.CgroupPath, Cgroup2.PathOf(child));

        await cluster.DisposeAsync();

        AssertNothingLeft(cluster.RunId);
        Assert.All(new[] { sleeper.Pid, parent.Pid, child, agent.Pid }, pid => Assert.False(IsAlive(pid), $"pid {pid} survived"));
        Assert.True(sleeper.HasExited);
    }

    [PrivilegedFact]
    public async Task Dispose_GivesSigtermFirst_ThenKillsWhatIgnoresIt()
    {
        var cluster = await NetnsCluster.CreateAsync(TwoByTwo with { StopGracePeriod = TimeSpan.FromMilliseconds(300) });
        var polite = cluster.Pod("demo", "a1").StartProcess("/bin/sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done");
        var stubborn = cluster.Pod("demo", "a2").StartProcess("/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 600");
        await polite.WaitForStdoutLineAsync(l => l == "ready", Timeout);
        await stubborn.WaitForStdoutLineAsync(l => l == "ready", Timeout);

        await cluster.DisposeAsync();

        Assert.Contains("got TERM", polite.StdoutLines);
        Assert.Equal(0, polite.ExitCode);
        Assert.Equal(137, stubborn.ExitCode);
        AssertNothingLeft(cluster.RunId);
    }

    [PrivilegedFact]
    public async Task Dispose_CalledTwiceAtOnce_BothReturnOnlyWhenEverythingIsGone()
    {
        var cluster = await NetnsCluster.CreateAsync(TwoByTwo);
        cluster.Pod("demo", "b1").StartProcess("sleep", "600");

        await Task.WhenAll(cluster.DisposeAsync().AsTask(), cluster.DisposeAsync().AsTask());

        AssertNothingLeft(cluster.RunId);
    }

    [PrivilegedTheory]
    [InlineData("underlay")]
    [InlineData("node:node2")]
    [InlineData("routes")]
    [InlineData("pod:node2/demo/b1")]
    public async Task CreateFailingHalfway_RemovesWhatItMade(string failingStep)
    {
        var error = await Assert.ThrowsAsync<HarnessException>(() =>
            NetnsCluster.CreateAsync(TwoByTwo with { FailAtStep = failingStep }));

        Assert.Contains("injected failure", error.Message);
        Assert.Contains("everything it made was removed", error.Message);
        Assert.NotNull(error.RunId);
        AssertNothingLeft(error.RunId);
    }

    [PrivilegedFact]
    public async Task CleanupStale_RemovesRunsOfDeadOwners_AndLeavesLiveOnesAlone()
    {
        await using var live = await NetnsCluster.CreateAsync(TwoByTwo with { TeardownOnExit = false });
        var crashed = await NetnsCluster.CreateAsync(TwoByTwo with { TeardownOnExit = false });
        var orphan = crashed.Pod("demo", "a1").StartProcess("sleep", "600");

        // pretend the owner died: point the record at a process that has exited
        var owner = Path.Join("/run/weft-harness", crashed.RunId, "owner");
        var lines = File.ReadAllLines(owner);
        lines[0] = (await DeadPidAsync()).ToString();
        File.WriteAllLines(owner, lines);

        var removed = NetnsCluster.CleanupStale();

        Assert.Contains(crashed.RunId, removed);
        Assert.DoesNotContain(live.RunId, removed);
        AssertNothingLeft(crashed.RunId);
        Assert.False(IsAlive(orphan.Pid));
        Assert.True(Directory.Exists(live.CgroupRoot));
        Assert.True(File.Exists(live.Pods.First().NetnsPath));
        await crashed.DisposeAsync(); // nothing left to do, and no error for it
    }

    [PrivilegedFact]
    public async Task AddPod_AfterCreation_IsReachableFromOtherNode()
    {
        await using var cluster = await NetnsCluster.CreateAsync(TwoByTwo);

        var late = cluster.AddPod(cluster.Node("node2"), "demo", "late1");
        await using var server = await PeerScripts.StartServerAsync(late, 8080);
        var reply = await PeerScripts.ExchangeAsync(cluster.Pod("demo", "a1"), late.Address.ToString(), 8080, "hi");

        Assert.Equal("10.244.2.4", late.Address.ToString());
        Assert.EndsWith("got hi", reply);
    }

    private static void AssertNothingLeft(string runId)
    {
        Assert.DoesNotContain(Directory.EnumerateFiles("/var/run/netns"), f => Path.GetFileName(f).StartsWith("weft" + runId, StringComparison.Ordinal));
        Assert.False(Directory.Exists(Path.Join(Cgroup2.FindMount(), "weft-" + runId)), "cgroup dir left");
        Assert.False(Directory.Exists(Path.Join("/run/weft-harness", runId)), "run record left");
    }

    private static bool IsAlive(int pid)
    {
        // a zombie is dead for our purposes; its parent will reap it
        var stat = $"/proc/{pid}/stat";
        if (!File.Exists(stat))
        {
            return false;
        }

        try
        {
            var text = File.ReadAllText(stat);
            return text[(text.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static async Task<int> DeadPidAsync()
    {
        using var process = System.Diagnostics.Process.Start("true")!;
        await process.WaitForExitAsync();
        return process.Id;
    }
}
