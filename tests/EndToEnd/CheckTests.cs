using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// <c>weft check</c> run in a node's network namespace against the node's real agent: everything passes
/// while it runs, and each broken prerequisite fails with its fix named.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class CheckTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions());

    private static Task<MeshCluster> StartAsync(params string[] agentArgs) =>
        MeshCluster.StartAsync(Spec(), Inventory, mtls: false, ["--admin", "127.0.0.1:15000", .. agentArgs]);

    /// <summary>Runs <c>weft check -o json</c> on the node (optionally wrapped) and returns its exit code and report.</summary>
    private static async Task<(int Exit, JsonElement Report, string Text)> CheckAsync(MeshCluster mesh, ClusterNode node, string[]? wrapper = null, params string[] args)
    {
        string[] check = ["check", "-o", "json", "--bpffs", mesh.PinRoot(node), .. args];
        var (file, arguments) = WeftExecutable.Command(check);
        await using var process = wrapper is null ? node.StartWeft(check) : node.StartProcess(wrapper[0], [.. wrapper[1..], file, .. arguments]);
        var exit = await process.WaitForExitAsync(Patience);
        try
        {
            return (exit, JsonDocument.Parse(process.Stdout).RootElement, process.Stdout + "\n" + process.Stderr);
        }
        catch (JsonException)
        {
            throw new InvalidOperationException($"weft check exited {exit} without a JSON report:\n{process.Stdout}\n{process.Stderr}");
        }
    }

    private static Dictionary<string, JsonElement> ByName(JsonElement report) =>
        report.GetProperty("checks").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!);

    private static string Status(JsonElement check) => check.GetProperty("status").GetString()!;

    [PrivilegedFact]
    public async Task Check_PassesEverything_WhileTheAgentRuns_AndFailsNamingTheFix_WhenItsCaNearsExpiry()
    {
        var caDirectory = Directory.CreateTempSubdirectory("weft-check-ca-").FullName;
        try
        {
            var ca = Weft.Identity.SelfSignedRoot.Write(caDirectory, "cluster.local", TimeSpan.FromDays(3));
            await using var mesh = await StartAsync("--trust-domain", "cluster.local", "--ca-cert", ca.CertificatePath, "--ca-key", ca.KeyPath, "--trust-bundle", ca.TrustBundlePath);
            var node1 = mesh.Cluster.Node("node1");

            // Within its warning time the CA is fine: every check passes (BTF, which Weft does not need, may only warn).
            var (exit, report, text) = await CheckAsync(mesh, node1, null, "--expiry-days", "1");
            Assert.True(exit == 0, text);
            Assert.True(report.GetProperty("ok").GetBoolean(), text);
            var checks = ByName(report);
            Assert.All(checks.Where(c => c.Key != "btf"), c => Assert.True(Status(c.Value) == "ok", $"{c.Key}: {c.Value}"));
            foreach (var name in new[] { "kernel", "bpffs", "cgroup v2", "hook connect4/6", "hook sockops", "hook sk_lookup", "map sockhash", "capabilities", "descriptor limit", "pins", "agent", "inventory", "certificates" })
            {
                Assert.True(checks.ContainsKey(name), $"no check {name}: {text}");
            }

            // With the default 30 days a CA that ends in 3 is named, with the fix.
            (exit, report, text) = await CheckAsync(mesh, node1);
            Assert.True(exit == 1, text);
            var certificates = ByName(report)["certificates"];
            Assert.Equal("fail", Status(certificates));
            Assert.Matches(@"^(CA|Root) .* expires in (2d|3d|7\dh)", certificates.GetProperty("detail").GetString());
            Assert.Contains("rotate the CA", certificates.GetProperty("fix").GetString());
            Assert.All(ByName(report).Where(c => c.Key is not ("btf" or "certificates")), c => Assert.Equal("ok", Status(c.Value)));
        }
        finally
        {
            Directory.Delete(caDirectory, recursive: true);
        }
    }

    [PrivilegedFact]
    public async Task Check_FailsNamingTheFix_WhenBpffsIsNotMounted_AndWhenTheAgentIsStopped()
    {
        await using var mesh = await StartAsync();
        var node1 = mesh.Cluster.Node("node1");

        // bpffs unmounted in a private mount namespace of the check's own: the machine's stays mounted.
        // (It may be mounted several times over at /sys/fs/bpf: every layer goes.)
        const string Unmount = "while grep -q ' /sys/fs/bpf ' /proc/self/mountinfo; do umount -l /sys/fs/bpf || exit 9; done; exec \"$@\"";
        string[] withoutBpffs = ["unshare", "--mount", "--propagation", "private", "sh", "-c", Unmount, "sh"];
        var (exit, report, text) = await CheckAsync(mesh, node1, withoutBpffs);
        Assert.True(exit == 1, text);
        var bpffs = ByName(report)["bpffs"];
        Assert.Equal("fail", Status(bpffs));
        Assert.Contains("/sys/fs/bpf is not a bpf filesystem", bpffs.GetProperty("detail").GetString());
        Assert.Contains("mount -t bpf bpf /sys/fs/bpf", bpffs.GetProperty("fix").GetString());
        Assert.Equal("ok", Status(ByName(report)["agent"]));
        Assert.True(Directory.Exists(mesh.PinRoot(node1)), "the machine's bpffs lost the agent's pins");

        var agent = mesh.Agent("node1");
        agent.Stop();
        Assert.Equal(0, await agent.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        (exit, report, text) = await CheckAsync(mesh, node1);
        Assert.True(exit == 1, text);
        var stopped = ByName(report);
        Assert.Equal("fail", Status(stopped["agent"]));
        Assert.Contains("cannot reach the Weft agent's admin API at 127.0.0.1:15000", stopped["agent"].GetProperty("detail").GetString());
        Assert.Contains("start it (weft agent", stopped["agent"].GetProperty("fix").GetString());
        Assert.Equal("skip", Status(stopped["certificates"]));

        // The stopped agent keeps its pins (a restarted one adopts them), and the node is still fine.
        Assert.Equal("ok", Status(stopped["pins"]));
        Assert.Equal("ok", Status(stopped["bpffs"]));
    }
}
