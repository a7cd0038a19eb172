using System.Diagnostics;
using System.Globalization;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// <c>weft-bench --suite idle</c> (issue 10's idle-RSS target): one node with a few pods and an mTLS-capable agent;
/// the agent is started, checked with one connection, left idle and measured from /proc, then stopped and started
/// again as the other build, so this build's weft.dll (JIT) and another <c>weft</c> executable (e.g. a NativeAOT
/// publish) are compared on the same node in the same run.
/// </summary>
internal static class IdleBenchmark
{
    public const string Usage = """
        weft-bench --suite idle [--compare FILE] [--pods 4] [--repeat 3] [--settle 10]
          One node with N pods (a Service over them, mTLS identities signed locally): starts `weft agent`,
          times it to "agent: ready", sends one connection through it (pod to Service VIP), waits S seconds
          and reads VmRSS, RssAnon, RssFile and RssShmem from /proc/PID/status; then stops it. Does so R times for this
          build's weft.dll (JIT) and, given --compare, for that weft executable too (e.g. a NativeAOT publish:
          dotnet publish agent/Weft.Agent.csproj -c Release -r linux-x64 -p:PublishAot=true -o DIR), the two
          alternating, and prints medians. Target (issue 10): idle RSS at most 50 MiB.
        """;

    private const string Namespace = "idle";
    private const int ServicePort = 80;
    private const int PodPort = 8080;
    private const double IdleRssTargetMib = 50;

    private sealed record Sample(double ReadySeconds, long RssKib, long AnonKib, long FileKib, long ShmemKib, int Threads);

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var compare = cl.Get("compare");
        var podCount = cl.Int("pods", 4);
        var repeat = cl.Int("repeat", 3);
        var settle = cl.Int("settle", 10);
        cl.RejectUnknown();
        if (podCount < 2 || repeat < 1 || settle < 0)
        {
            throw new UsageException("--pods wants 2 or more, --repeat 1 or more, --settle 0 or more");
        }

        if (compare is not null && !File.Exists(compare))
        {
            throw new UsageException($"--compare {compare}: no such file");
        }

        // "this build" is the kit's weft.dll whatever the caller's environment says; the compared file is set per start
        var inherited = Environment.GetEnvironmentVariable(WeftExecutable.OverrideVariable);
        var inheritedAgent = Environment.GetEnvironmentVariable(WeftExecutable.AgentVariable);
        Environment.SetEnvironmentVariable(WeftExecutable.OverrideVariable, null);
        Environment.SetEnvironmentVariable(WeftExecutable.AgentVariable, null);
        try
        {
            var pods = Enumerable.Range(1, podCount).Select(i => new PodSpec(Namespace, $"p{i}")).ToArray();
            await using var mesh = await MeshCluster.StartAsync(new ClusterSpec(new NodeSpec("node1", pods)), c => c.InventoryYaml(
                new ServiceSpec("svc", Namespace, "10.96.0.20", ServicePort, PodPort, [.. c.Nodes[0].Pods.Skip(1)])), mtls: true);
            var node = mesh.Cluster.Node("node1");
            var client = node.Pods[0];
            var servers = (await Task.WhenAll(node.Pods.Skip(1).Select(p => MeshCluster.StartServerAsync(p, "--port", PodPort.ToString(CultureInfo.InvariantCulture))))).ToList();
            try
            {
                var builds = compare is null ? new[] { ("jit", (string?)null) } : [("jit", null), ("compare", Path.GetFullPath(compare))];
                var samples = builds.ToDictionary(b => b.Item1, _ => new List<Sample>());
                for (var round = 0; round < repeat; round++)
                {
                    foreach (var (name, file) in round % 2 == 0 ? builds : builds.Reverse())
                    {
                        var sample = await MeasureAsync(mesh, node, client, file, TimeSpan.FromSeconds(settle));
                        samples[name].Add(sample);
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  round {round + 1} {name,-7} ready {sample.ReadySeconds:0.00} s, RSS {BenchCommand.Mib(sample.RssKib)} (anon {BenchCommand.Mib(sample.AnonKib)}, file {BenchCommand.Mib(sample.FileKib)}, shmem {BenchCommand.Mib(sample.ShmemKib)}), threads {sample.Threads}"));
                    }
                }

                Console.WriteLine($"idle agent, one node, {podCount} pods, {settle} s after one connection; medians of {repeat}:");
                Console.WriteLine("| build | file | size | ready | VmRSS | RssAnon | RssFile | RssShmem | target RSS <= 50 MiB |");
                Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
                foreach (var (name, file) in builds)
                {
                    var runs = samples[name];
                    var rss = BenchCommand.Median(runs.Select(s => (double)s.RssKib));
                    var shown = file ?? Path.Combine(AppContext.BaseDirectory, WeftExecutable.Agent + ".dll");
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {name} | {shown} | {new FileInfo(shown).Length / 1048576.0:0.0} MiB | {BenchCommand.Median(runs.Select(s => s.ReadySeconds)):0.00} s | " +
                        $"{rss / 1024:0.0} MiB | {BenchCommand.Median(runs.Select(s => (double)s.AnonKib)) / 1024:0.0} MiB | " +
                        $"{BenchCommand.Median(runs.Select(s => (double)s.FileKib)) / 1024:0.0} MiB | {BenchCommand.Median(runs.Select(s => (double)s.ShmemKib)) / 1024:0.0} MiB | {(rss / 1024 <= IdleRssTargetMib ? "met" : "missed")} |"));
                }

                return 0;
            }
            finally
            {
                foreach (var server in servers)
                {
                    await server.DisposeAsync();
                }
            }
        }
        finally
        {
            Environment.SetEnvironmentVariable(WeftExecutable.OverrideVariable, inherited);
            Environment.SetEnvironmentVariable(WeftExecutable.AgentVariable, inheritedAgent);
        }
    }

    /// <summary>Replaces the node's agent with <paramref name="file"/> (null: this build's weft.dll), checks it carries a connection, and reads it once idle.</summary>
    private static async Task<Sample> MeasureAsync(MeshCluster mesh, ClusterNode node, ClusterPod client, string? file, TimeSpan settle)
    {
        var previous = mesh.Agent(node.Name);
        previous.Stop();
        await previous.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Environment.SetEnvironmentVariable(WeftExecutable.AgentVariable, file);
        var started = Stopwatch.StartNew();
        var agent = await mesh.StartAgentAsync(node);
        var ready = started.Elapsed.TotalSeconds;
        Environment.SetEnvironmentVariable(WeftExecutable.AgentVariable, null);

        var run = await MeshCluster.RunPeerAsync(client, TimeSpan.FromMinutes(1), "send", "--to", $"10.96.0.20:{ServicePort}", "--bytes", "4096", "--timeout-ms", "10000");
        if (run.ExitCode != 0)
        {
            throw new InvalidOperationException($"a connection through {agent} failed: {run}\nagent:\n{agent.Stderr}");
        }

        await Task.Delay(settle);
        var status = ProcStatusFields.Read(agent.Pid);
        long Kib(string name) => ProcStatusFields.Kib(status, name);
        return new Sample(ready, Kib("VmRSS"), Kib("RssAnon"), Kib("RssFile"), Kib("RssShmem"), int.Parse(status["Threads"], CultureInfo.InvariantCulture));
    }
}
