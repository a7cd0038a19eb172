using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Agents that hold no CA key: <c>weft ca serve</c> on node1 holds it, and each agent asks it for its pods'
/// certificates with the node certificate <c>weft ca issue-node</c> made. a1 (sa a) runs on node1, b1 (sa b) on node2.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class CaServiceMeshTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml();

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task AgentsWithNoCaKey_GetTheirPodsCertificatesFromTheCa_AndCrossNodeMtlsWorks()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.CaService);
        foreach (var node in mesh.Cluster.Nodes)
        {
            var commandLine = File.ReadAllText($"/proc/{mesh.Agent(node.Name).Pid}/cmdline").Replace('\0', ' ');
            Assert.DoesNotContain("--ca-key", commandLine);
            Assert.DoesNotContain(mesh.Ca!.KeyPath, commandLine);
            Assert.Contains("--ca-address", commandLine);
        }

        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "4096");
        await SendAsync(mesh.Cluster.Pod("demo", "a1"), server);

        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("mutual_tls", outbound.GetProperty("connection_security_policy").GetString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", outbound.GetProperty("source_principal").GetString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/b", outbound.GetProperty("destination_principal").GetString());
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", inbound.GetProperty("source_principal").GetString());

        // The CA signed each identity for the node its pod runs on, and nothing else.
        var ca = mesh.CaService!.StderrLines;
        Assert.Single(ca, l => l.Contains("issued spiffe://cluster.local/ns/demo/sa/a to node node1", StringComparison.Ordinal));
        Assert.Single(ca, l => l.Contains("issued spiffe://cluster.local/ns/demo/sa/b to node node2", StringComparison.Ordinal));
        Assert.DoesNotContain(ca, l => l.Contains("refused", StringComparison.Ordinal));
        Assert.Equal(1, Value(await MetricsAsync(mesh.Cluster.Node("node1")), "weft_ca_requests_total", "result", "ok"));
    }

    [PrivilegedFact]
    public async Task CaDownLongerThanARenewalPeriod_TrafficFlowsOnHeldCertificates_AndRenewalRecoversWhenItReturns()
    {
        // 30 s certificates: renewal is due 15 s after issuance. Idle tunnels close after 1 s, so each send handshakes anew.
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.CaService,
            "--svid-lifetime-seconds", "30", "--tunnel-idle-seconds", "1");
        var (node1, node2) = (mesh.Cluster.Node("node1"), mesh.Cluster.Node("node2"));
        var (client, server) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "b1"));
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "4096");
        await SendAsync(client, server);
        var outage = Stopwatch.StartNew();
        await mesh.StopCaServiceAsync();

        // Both agents find renewal due and the CA gone.
        await WaitUntilAsync(async () => Value(await MetricsAsync(node1), "weft_ca_requests_total", "result", "failed") >= 1
            && Value(await MetricsAsync(node2), "weft_ca_requests_total", "result", "failed") >= 1, 40);
        Assert.Equal(0, Value(await MetricsAsync(node1), "weft_certificate_renewals_total"));

        // A new connection, in a new tunnel, handshakes with the held certificates.
        await Task.Delay(1500);
        await SendAsync(client, server);
        var during = MeshCluster.Flows(mesh.Agent("node1")).Last(f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("mutual_tls", during.GetProperty("connection_security_policy").GetString());
        Assert.Equal("-", during.GetProperty("response_flags").GetString());
        Assert.True(Value(await MetricsAsync(node1), "weft_certificate_expiry_timestamp_seconds", "principal", "spiffe://cluster.local/ns/demo/sa/a")
            > DateTimeOffset.UtcNow.ToUnixTimeSeconds(), "the expiry gauge shows the held certificate, still valid");

        // The CA was away for more than a renewal period; when it returns both agents renew.
        var renewalPeriod = TimeSpan.FromSeconds(15);
        if (outage.Elapsed < renewalPeriod)
        {
            await Task.Delay(renewalPeriod - outage.Elapsed + TimeSpan.FromSeconds(1));
        }

        await mesh.StartCaServiceAsync();
        await WaitUntilAsync(async () => Value(await MetricsAsync(node1), "weft_certificate_renewals_total") >= 1
            && Value(await MetricsAsync(node2), "weft_certificate_renewals_total") >= 1, 30);
        Assert.Contains(mesh.Agent("node1").StderrLines, l => l.Contains("renewed spiffe://cluster.local/ns/demo/sa/a", StringComparison.Ordinal));

        await Task.Delay(1500);
        await SendAsync(client, server);
        Assert.Equal(3, Served(serve));
    }

    [PrivilegedFact]
    public async Task NewPodsFirstConnection_WhileTheCaIsDown_WaitsThenFailsWithNoCertificate_NeverPlaintext()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.CaService, "--certificate-wait-seconds", "3");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "4096");
        await mesh.StopCaServiceAsync();

        // c1 (service account c, new to node1) arrives while the CA is down.
        var applied = mesh.Agent("node1").StderrLines.Count;
        var newcomer = mesh.Cluster.AddPod(mesh.Cluster.Node("node1"), "demo", "c1");
        mesh.WriteInventory(Inventory(mesh.Cluster));
        await CaptureScopeTests.WaitUntilAsync(() => mesh.Agent("node1").StderrLines.Skip(applied).Any(l => l.Contains("2 local pod(s) enrolled", StringComparison.Ordinal)), 30);

        var pcap = Path.Combine(Path.GetTempPath(), $"weft-{mesh.Cluster.RunId}-ca.pcap");
        var capture = await UnderlayCapture.StartAsync(mesh.Cluster.UnderlayNetnsName, pcap);
        var started = Stopwatch.StartNew();
        PeerRun run;
        try
        {
            run = await MeshCluster.RunPeerAsync(newcomer, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "1000", "--timeout-ms", "20000");
            await Task.Delay(500);
        }
        finally
        {
            await capture.StopAsync();
        }

        try
        {
            Assert.True(run.ExitCode != 0, run.ToString());
            Assert.True(started.Elapsed >= TimeSpan.FromSeconds(3), "the connection waited for a certificate before failing");
            var failed = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("source_workload").GetString() == "demo/c1");
            Assert.Equal("NO_CERTIFICATE", failed.GetProperty("response_flags").GetString());
            Assert.Contains("no certificate for spiffe://cluster.local/ns/demo/sa/c yet", failed.GetProperty("error").GetString());
            Assert.Equal(0, failed.GetProperty("bytes_sent").GetInt64());

            // Nothing reached the server, and nothing crossed the wire to its port in the clear.
            Assert.Equal(0, Served(serve));
            Assert.DoesNotContain(MeshCluster.Flows(mesh.Agent("node2")), f => f.GetProperty("direction").GetString() == "inbound");
            var clear = Run("tcpdump", "-nn", "-r", pcap, "tcp port 8080");
            Assert.True(clear.Trim().Length == 0, $"plaintext to the app port on the wire:\n{clear}");
        }
        finally
        {
            File.Delete(pcap);
        }

        var unavailable = await MetricsAsync(mesh.Cluster.Node("node1"));
        Assert.Matches("weft_tcp_connection_duration_seconds_count\\{[^}]*response_flags=\"NO_CERTIFICATE\"", unavailable);

        // The CA returns: the same pod's next connection gets its certificate and goes through in mTLS.
        await mesh.StartCaServiceAsync();
        await SendAsync(newcomer, server, mesh.Agent("node1"));
        Assert.Equal(1, Served(serve));
    }

    private static async Task SendAsync(ClusterPod client, ClusterPod server, ManagedProcess? agent = null)
    {
        var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", "10000", "--expect-reply-bytes", "4096", "--timeout-ms", "30000");
        Assert.True(run.ExitCode == 0, $"{client.Name} → {server.Name}: {run}\n{string.Join('\n', agent?.StderrLines.TakeLast(15) ?? [])}");
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, double seconds)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"condition not met in {seconds} s");
            await Task.Delay(500);
        }
    }

    private static async Task<string> MetricsAsync(ClusterNode node)
    {
        await using var process = node.StartProcess("curl", "-sS", "--max-time", "10", "http://127.0.0.1:15020/metrics");
        var exit = await process.WaitForExitAsync(TimeSpan.FromSeconds(60));
        Assert.True(exit == 0, $"curl /metrics exited {exit}: {process.Stderr}");
        return process.Stdout;
    }

    private static double Value(string exposition, string name, string? label = null, string? labelValue = null)
    {
        var selector = label is null ? Regex.Escape(name) : $"{Regex.Escape(name)}\\{{{Regex.Escape(label)}=\"{Regex.Escape(labelValue!)}\"\\}}";
        var match = Regex.Match(exposition, $"^{selector} (\\S+)$", RegexOptions.Multiline);
        Assert.True(match.Success, $"no {selector} in /metrics:\n{exposition}");
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    private static string Run(string file, params string[] args)
    {
        using var process = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return output;
    }
}
