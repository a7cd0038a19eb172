using System.Diagnostics;
using System.Text.Json;
using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Replacing a node's agent while its pods are busy: a rolling update (new agent beside the old, then
/// SIGTERM) loses no new connection, and a kill -9 lets nothing through in plaintext around the agent.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class RolloutTests(ITestOutputHelper output)
{
    private const string Vip = "10.96.0.10:80";
    private const int HeldConnections = 50;
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(20);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions
    {
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "b1"))],
    });

    /// <summary>New connections without end, 16 at a time, each a small request and a 7-byte reply.</summary>
    private static ManagedProcess StartLoad(ClusterPod client) => client.StartWeft(
        "app", "send", "--to", Vip, "--bytes", "64", "--expect-reply-bytes", "7",
        "--connections", "1000000", "--concurrency", "16", "--timeout-ms", "5000");

    private static List<JsonElement> Connections(ManagedProcess peer) => peer.StdoutLines
        .Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement)
        .Where(l => !l.TryGetProperty("summary", out _)).ToList();

    private static string? Error(JsonElement connection) =>
        connection.GetProperty("error").ValueKind == JsonValueKind.Null ? null : connection.GetProperty("error").GetString();

    private static int Lines(ManagedProcess peer) => peer.StdoutLines.Count;

    [PrivilegedTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task RollingRestartUnderLoad_NoNewConnectionFails_HeldConnectionsDrainThenCloseCleanly(bool mtls)
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, mtls);
        var node1 = mesh.Cluster.Node("node1");
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "7");
        await using var echo = await MeshCluster.StartServerAsync(server, "--port", "9090", "--mode", "echo");

        // 50 long-lived connections, each proven end to end with an echo, all through the old agent.
        await using var hold = client.StartWeft("app", "hold", "--to", $"{server.Address}:9090", "--connections", $"{HeldConnections}",
            "--exchange-bytes", "64", "--stdin", "ignore", "--timeout-ms", "5000");
        var opened = JsonDocument.Parse(await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), Bounded)).RootElement;
        Assert.True(opened.GetProperty("open").GetInt32() == HeldConnections, opened.ToString());

        await using var load = StartLoad(client);
        await Task.Delay(1000);
        var old = mesh.Agent("node1");
        var clock = Stopwatch.StartNew();
        var linesAtStart = Lines(load);

        // The new agent comes up beside the old one: same pins, same ports (SO_REUSEPORT in the pods;
        // its metrics and health ports wait for the old agent to let go).
        var replacement = await mesh.StartAgentAsync(node1);
        var upAfter = clock.Elapsed;

        // Connections that outlive the SIGTERM but end within the 2 s drain window.
        await using var draining = client.StartWeft("app", "send", "--to", Vip, "--bytes", "64", "--expect-reply-bytes", "7",
            "--connections", "20", "--concurrency", "20", "--hold-ms", "1000", "--timeout-ms", "5000");
        await Task.Delay(300);
        old.Stop();
        var stoppedAt = clock.Elapsed;
        Assert.Equal(0, await old.WaitForExitAsync(Bounded));
        var oldExitedAfter = clock.Elapsed - stoppedAt;

        // The replacement now serves alone, and binds the host ports the old agent released.
        await Task.Delay(1500);
        var windowLines = Lines(load) - linesAtStart;
        var window = clock.Elapsed;
        load.Kill();
        await load.WaitForExitAsync(Bounded);
        var drainedExit = await draining.WaitForExitAsync(Bounded);
        Assert.True(drainedExit == 0, $"connections open across the SIGTERM failed:\n{draining.Stdout}\nold agent:\n{old.Stderr}");
        await AssertHealthAnswersAsync(node1, replacement);

        // Held connections: closed by the old agent at the end of its drain, none left hanging.
        hold.Stop();
        await hold.WaitForExitAsync(Bounded);
        var held = JsonDocument.Parse(hold.StdoutLines.Last(l => l.Contains("summary", StringComparison.Ordinal))).RootElement;

        var connections = Connections(load);
        var failures = connections.Select(Error).Where(e => e is not null and not "Stopped").GroupBy(e => e).ToDictionary(g => g.Key!, g => g.Count());
        var rate = windowLines / window.TotalSeconds;
        output.WriteLine($"mtls={mtls}: replacement ready after {upAfter.TotalMilliseconds:0} ms; old agent exited {oldExitedAfter.TotalMilliseconds:0} ms after SIGTERM; "
            + $"{connections.Count(c => Error(c) is null)} ok connections, {rate:0}/s during the {window.TotalSeconds:0.0} s window; failures: {JsonSerializer.Serialize(failures)}; held: {held}");
        Assert.True(failures.Count == 0, $"failed new connections: {JsonSerializer.Serialize(failures)}\nold agent:\n{old.Stderr}\nnew agent:\n{replacement.Stderr}");
        // Not a speed bound (that is the benchmark's): the swap must happen under real load, hundreds of new
        // connections crossing it. The rate itself varied from about 190 to 700/s between runs on this machine.
        Assert.True(rate >= 50 && windowLines >= 300, $"only {windowLines} new connections ({rate:0}/s): too little load to show a hitless swap");
        Assert.Equal(HeldConnections, held.GetProperty("closed_by_peer").GetInt32());
        Assert.True(oldExitedAfter < TimeSpan.FromSeconds(6), $"old agent took {oldExitedAfter} to exit with a 2 s drain");
        Assert.Contains(MeshCluster.Flows(replacement), f => f.GetProperty("direction").GetString() == "outbound");
    }

    [PrivilegedFact]
    public async Task AgentKilledUnderLoad_NothingLeaksInPlaintext_NextAgentServesOnceReady()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, mtls: true);
        var node1 = mesh.Cluster.Node("node1");
        var client = mesh.Cluster.Pod("demo", "a1");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "7");
        await using var load = StartLoad(client);
        await Task.Delay(1000);

        mesh.Agent("node1").Kill();
        await mesh.Agent("node1").WaitForExitAsync(Bounded);
        await Task.Delay(300);

        // No agent: the pod's connects are refused (fail closed), the server sees nothing new.
        var served = Served(serve);
        var linesDead = Lines(load);
        await Task.Delay(1000);
        Assert.Equal(served, Served(serve));
        var dead = Connections(load).Skip(linesDead).ToList();
        Assert.NotEmpty(dead);
        Assert.All(dead, c => Assert.Equal("ConnectionRefused", Error(c)));

        // The next agent adopts the pins and the inventory: new connections work again by the time it says it is
        // ready. How long a start takes is a figure for the benchmark, not a bound here: it varied from 2.4 to 5.3 s
        // between runs of the same build on this 2-core machine.
        var launch = Stopwatch.StartNew();
        var linesBefore = Lines(load);
        var start = mesh.StartAgentAsync(node1);
        TimeSpan? firstOk = null;
        while (launch.Elapsed < Bounded && firstOk is null)
        {
            if (Connections(load).Skip(linesBefore).Any(c => Error(c) is null))
            {
                firstOk = launch.Elapsed;
            }

            await Task.Delay(20);
        }

        var replacement = await start;
        var ready = launch.Elapsed;
        await Task.Delay(500);
        var linesAfter = Lines(load);
        await Task.Delay(1000);
        load.Kill();
        await load.WaitForExitAsync(Bounded);
        output.WriteLine($"first connection through the new agent {firstOk?.TotalMilliseconds:0} ms after launch; ready line at {ready.TotalMilliseconds:0} ms");
        Assert.True(firstOk is not null && firstOk <= ready + TimeSpan.FromSeconds(1),
            $"first new connection after {firstOk?.ToString() ?? "never"}, the agent was ready after {ready}\n{replacement.Stderr}");
        var after = Connections(load).Skip(linesAfter).Where(c => Error(c) != "Stopped").ToList();
        Assert.NotEmpty(after);
        Assert.All(after, c => Assert.Null(Error(c)));

        // Everything the server received came through the agents in mTLS: a connect that slipped
        // past the dead agent would reach node2's agent in plaintext (and show there as "none").
        await Task.Delay(500);
        var inbound = MeshCluster.Flows(mesh.Agent("node2")).Where(f => f.GetProperty("direction").GetString() == "inbound").ToList();
        Assert.NotEmpty(inbound);
        Assert.All(inbound, f => Assert.Equal("mutual_tls", f.GetProperty("connection_security_policy").GetString()));
    }

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    private static async Task AssertHealthAnswersAsync(ClusterNode node, ManagedProcess agent)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        var code = "";
        var detail = "";
        while (code != "200" && DateTime.UtcNow < deadline)
        {
            await using var curl = node.StartProcess("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "http://127.0.0.1:15021/healthz");
            await curl.WaitForExitAsync(TimeSpan.FromSeconds(10));
            code = curl.Stdout.Trim();
            detail = $"exit {curl.ExitCode}: {curl.Stderr}";
            if (code != "200")
            {
                await Task.Delay(200);
            }
        }

        Assert.True(code == "200", $"/healthz answered '{code}' ({detail})\n{agent.Stderr}");
    }
}
