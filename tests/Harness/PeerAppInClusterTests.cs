using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.Harness;

/// <summary>`weft app` as a real process in pods, across nodes, with no agent in between.</summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
public sealed class PeerAppInClusterTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [PrivilegedFact]
    public async Task Send_AcrossNodes_HashesAgreeOnBothSides()
    {
        await using var cluster = await NetnsCluster.CreateAsync(new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "a1")),
            new NodeSpec("node2", new PodSpec("demo", "b1"))));
        var a1 = cluster.Pod("demo", "a1");
        var b1 = cluster.Pod("demo", "b1");
        await using var server = b1.StartWeft("app", "serve", "--port", "8080", "--reply-bytes", "5000");
        await server.WaitForStdoutLineAsync(l => l.Contains("listening"), Timeout);

        await using var client = a1.StartWeft(
            "app", "send", "--to", $"{b1.Address}:8080", "--bytes", "3000000", "--connections", "20", "--concurrency", "10", "--expect-reply-bytes", "5000");

        Assert.True(await client.WaitForExitAsync(Timeout) == 0, client.Stdout + client.Stderr);
        var served = JsonDocument.Parse(await server.WaitForStdoutLineAsync(l => l.Contains("sha256"), Timeout)).RootElement;
        Assert.Equal(Pattern.Sha256(3_000_000), served.GetProperty("sha256").GetString());
        Assert.StartsWith(a1.Address + ":", served.GetProperty("remote").GetString());
        Assert.Equal(b1.Address + ":8080", served.GetProperty("local").GetString());
    }

    [PrivilegedFact]
    public async Task AThousandConnections_HeldOpenAtOnce_AcrossNodes_AllSucceed()
    {
        await using var cluster = await NetnsCluster.CreateAsync(new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "a1")),
            new NodeSpec("node2", new PodSpec("demo", "b1"))));
        var b1 = cluster.Pod("demo", "b1");
        await using var server = b1.StartWeft("app", "serve", "--port", "8080", "--reply-bytes", "100");
        await server.WaitForStdoutLineAsync(l => l.Contains("listening"), Timeout);

        await using var client = cluster.Pod("demo", "a1").StartWeft(
            "app", "send", "--to", $"{b1.Address}:8080", "--bytes", "1000", "--connections", "1000", "--concurrency", "1000", "--hold-ms", "2000", "--expect-reply-bytes", "100");

        Assert.True(await client.WaitForExitAsync(Timeout) == 0, client.Stderr);
        var summary = JsonDocument.Parse(client.StdoutLines[^1]).RootElement;
        Assert.Equal(1000, summary.GetProperty("ok").GetInt64());
    }

    [PrivilegedFact]
    public async Task Serve_OnSigterm_ExitsCleanly()
    {
        await using var cluster = await NetnsCluster.CreateAsync(new ClusterSpec(new NodeSpec("node1", new PodSpec("demo", "a1"))));
        await using var server = cluster.Pod("demo", "a1").StartWeft("app", "serve", "--port", "8080", "--mode", "echo");
        await server.WaitForStdoutLineAsync(l => l.Contains("listening"), Timeout);

        server.Stop();

        Assert.Equal(0, await server.WaitForExitAsync(Timeout));
    }
}
