using System.Diagnostics;
using System.Text;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>Pod traffic between agents that hold a CA: mTLS tunnels, identities, policy, modes.</summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class MutualTlsTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "a2"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c, string extra = "") => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1")],
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "b1"))],
    }) + extra;

    private static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("sha256", StringComparison.Ordinal));

    [PrivilegedFact]
    public async Task CrossNode_RidesMtlsTunnel_WireShowsOnlyPort15008_PayloadNeverInClear()
    {
        const long bytes = 2L * 1024 * 1024;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", bytes.ToString());
        var pcap = Path.Combine(Path.GetTempPath(), $"weft-{mesh.Cluster.RunId}.pcap");
        var capture = await UnderlayCapture.StartAsync(mesh.Cluster.UnderlayNetnsName, pcap);
        try
        {
            var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080",
                "--bytes", bytes.ToString(), "--expect-reply-bytes", bytes.ToString());
            Assert.True(run.ExitCode == 0, run.ToString());
            Assert.Equal(Pattern.Sha256(bytes), run.Connections[0].GetProperty("received_sha256").GetString());
            await Task.Delay(500);
        }
        finally
        {
            await capture.StopAsync();
        }

        try
        {
            var raw = File.ReadAllBytes(pcap);
            // The capture saw the transfer (both directions carry `bytes`; a loaded machine may drop a few packets).
            Assert.True(raw.Length > bytes, $"capture holds {raw.Length} bytes: did it see the transfer?");

            // Not one 64-byte run of the known payload crosses the wire in the clear.
            var probe = Pattern.Block.Span[1000..1064].ToArray();
            Assert.True(raw.AsSpan().IndexOf(probe) < 0, "payload found in clear text on the wire");

            // The handshake on the wire is TLS 1.3: the ServerHello carries supported_versions = 0x0304
            // (extension 0x002b, length 2), and no TLS 1.2 ServerHello (legacy version without it) occurs.
            byte[] tls13 = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
            Assert.True(raw.AsSpan().IndexOf(tls13) >= 0, "no TLS 1.3 ServerHello on the wire");

            // Every TCP segment between the nodes is to or from the tunnel port.
            var other = Run("tcpdump", "-nn", "-r", pcap, "tcp and not port 15008");
            Assert.True(other.Trim().Length == 0, $"traffic other than port 15008 on the wire:\n{other}");
            var tunnel = Run("tcpdump", "-nn", "-r", pcap, "-c", "5", $"tcp dst port 15008 and dst host {server.Address}");
            Assert.Contains(".15008:", tunnel);
        }
        finally
        {
            File.Delete(pcap);
        }

        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("mutual_tls", outbound.GetProperty("connection_security_policy").GetString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", outbound.GetProperty("source_principal").GetString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/b", outbound.GetProperty("destination_principal").GetString());
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", inbound.GetProperty("source_principal").GetString());
        Assert.Equal("demo/a1", inbound.GetProperty("source_workload").GetString());
        Assert.Equal(bytes, inbound.GetProperty("bytes_sent").GetInt64());
        Assert.Equal(bytes, inbound.GetProperty("bytes_received").GetInt64());
        Assert.Equal(outbound.GetProperty("traceparent").GetString(), inbound.GetProperty("traceparent").GetString());
    }

    [PrivilegedFact]
    public async Task NewConnection_ClientsFirstBytesGoWithTheTunnelRequest_AndArriveOnceBothWays()
    {
        const long bytes = 100_000;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true, "--metrics", ":15020");
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--mode", "echo");

        // The client sends as soon as it is connected; its first connection waits for a tunnel's dial, so its first
        // bytes are in the agent's socket when the stream opens, and go with the CONNECT.
        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", bytes.ToString(), "--expect-reply-bytes", bytes.ToString());

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(Pattern.Sha256(bytes), run.Connections[0].GetProperty("received_sha256").GetString());
        var metrics = await TunnelPoolLimitTests.MetricsAsync(mesh.Cluster.Pod("demo", "a1").Node);
        Assert.Equal(1, TunnelPoolLimitTests.Value(metrics, "weft_hbone_streams_first_bytes_total"));
        Assert.Equal(0, TunnelPoolLimitTests.Value(metrics, "weft_hbone_first_bytes_budget_spent_total"));
        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal(bytes, outbound.GetProperty("bytes_sent").GetInt64());
        Assert.Equal(bytes, outbound.GetProperty("bytes_received").GetInt64());
        var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal(bytes, inbound.GetProperty("bytes_sent").GetInt64());
        Assert.Equal(bytes, inbound.GetProperty("bytes_received").GetInt64());
    }

    [PrivilegedFact]
    public async Task SameNode_ShortCut_IsAuthorizedAndRecordedOnBothSides()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "a2");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "1000");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", "5000", "--expect-reply-bytes", "1000");

        Assert.True(run.ExitCode == 0, run.ToString());
        var agent = mesh.Agent("node1");
        var inbound = await PodTrafficTests.WaitForFlowAsync(agent, f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/a", inbound.GetProperty("source_principal").GetString());
        Assert.Equal("demo/a2", inbound.GetProperty("destination_workload").GetString());
        Assert.Equal(5000, inbound.GetProperty("bytes_sent").GetInt64());
    }

    [PrivilegedFact]
    public async Task DenyPolicy_RefusesBeforeAnyByteReachesTheApp_AndSaysWhy()
    {
        const string deny = """

            ---
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: deny-a, namespace: demo}
            spec:
              selector: {matchLabels: {app: b}}
              action: DENY
              rules:
              - from: [{source: {principals: ["cluster.local/ns/demo/sa/a"]}}]
            """;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c, deny), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "10");
        await Task.Delay(300);

        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", "10.96.0.10:80",
            "--bytes", "100", "--expect-reply-bytes", "10", "--timeout-ms", "5000");

        Assert.NotEqual(0, run.ExitCode);
        var denied = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("response_flags").GetString() == "DENY");
        Assert.Contains("demo/deny-a", denied.GetProperty("error").GetString());
        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("DENY", outbound.GetProperty("response_flags").GetString());
        await Task.Delay(300);
        Assert.Equal(0, Served(serve));
    }

    [PrivilegedFact]
    public async Task Strict_RefusesPlaintextFromOutsideTheMesh_PermissiveLetsItThroughAsPlaintext()
    {
        const string strict = """

            ---
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: strict, namespace: demo}
            spec: {mtls: {mode: STRICT}}
            """;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        var stranger = mesh.Cluster.Pod("demo", "x1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "10");
        await Task.Delay(300);

        var permitted = await MeshCluster.RunPeerAsync(stranger, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "100", "--expect-reply-bytes", "10");
        Assert.True(permitted.ExitCode == 0, permitted.ToString());
        var plaintext = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound");
        Assert.Equal("none", plaintext.GetProperty("connection_security_policy").GetString());

        var agent = mesh.Agent("node2");
        var applied = agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal));
        mesh.WriteInventory(Inventory(mesh.Cluster, strict));
        await CaptureScopeTests.WaitUntilAsync(() => agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal)) > applied);
        var servedBefore = Served(serve);
        var refused = await MeshCluster.RunPeerAsync(stranger, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "100", "--expect-reply-bytes", "10", "--timeout-ms", "5000");
        Assert.NotEqual(0, refused.ExitCode);
        await PodTrafficTests.WaitForFlowAsync(agent, f => f.TryGetProperty("error", out var e) && e.GetString()!.Contains("STRICT", StringComparison.Ordinal));
        Assert.Equal(servedBefore, Served(serve));

        // Meshed pods still get through: they arrive in mTLS.
        var meshed = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080", "--bytes", "100", "--expect-reply-bytes", "10");
        Assert.True(meshed.ExitCode == 0, meshed.ToString());
    }

    [PrivilegedFact]
    public async Task PeerAgentWithAnotherCa_IsRefused_WithTlsFailureRecorded_AndNothingReachesTheApp()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "10");

        // node2's agent is replaced by one whose CA the mesh does not trust.
        var node2 = mesh.Cluster.Node("node2");
        var old = mesh.Agent("node2");
        old.Stop();
        await old.WaitForExitAsync(TimeSpan.FromSeconds(15));
        var rogue = Weft.Identity.SelfSignedRoot.Write(Path.Combine(Path.GetDirectoryName(mesh.InventoryPath)!, "rogue"), MeshCluster.TrustDomain);
        var agent = await mesh.StartAgentAsync(node2, "--trust-domain", MeshCluster.TrustDomain, "--ca-cert", rogue.CertificatePath,
            "--ca-key", rogue.KeyPath, "--trust-bundle", rogue.TrustBundlePath);

        var run = await MeshCluster.RunPeerAsync(mesh.Cluster.Pod("demo", "a1"), Long, "send", "--to", $"{server.Address}:8080",
            "--bytes", "100", "--expect-reply-bytes", "10", "--timeout-ms", "5000");

        Assert.NotEqual(0, run.ExitCode);
        var outbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node1"), f => f.GetProperty("direction").GetString() == "outbound");
        Assert.Equal("TLS_FAILURE", outbound.GetProperty("response_flags").GetString());
        Assert.Contains("unknown CA", outbound.GetProperty("error").GetString());
        var refused = await PodTrafficTests.WaitForFlowAsync(agent, f => f.GetProperty("response_flags").GetString() == "TLS_FAILURE");
        Assert.Equal("demo/b1", refused.GetProperty("destination_workload").GetString());
        Assert.Equal(0, Served(serve));
    }

    [PrivilegedFact]
    public async Task Tunnel_256MiBEachWay_ByteIdentical_And500ConcurrentStreamsShareFewTunnels()
    {
        const long bytes = 256L * 1024 * 1024;
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", bytes.ToString());
        await using var many = await MeshCluster.StartServerAsync(server, "--port", "9090", "--reply-bytes", "512");
        await Task.Delay(300);
        var client = mesh.Cluster.Pod("demo", "a1");

        var big = await MeshCluster.RunPeerAsync(client, TimeSpan.FromMinutes(4), "send", "--to", $"{server.Address}:8080",
            "--bytes", bytes.ToString(), "--expect-reply-bytes", bytes.ToString(), "--timeout-ms", "200000");
        Assert.True(big.ExitCode == 0, big.ToString());
        Assert.Equal(Pattern.Sha256(bytes), big.Connections[0].GetProperty("received_sha256").GetString());
        var served = System.Text.Json.JsonDocument.Parse(await serve.WaitForStdoutLineAsync(l => l.Contains("sha256"), Long)).RootElement;
        Assert.Equal(Pattern.Sha256(bytes), served.GetProperty("sha256").GetString());

        var concurrent = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:9090", "--bytes", "4096",
            "--connections", "500", "--concurrency", "500", "--hold-ms", "1000", "--expect-reply-bytes", "512");
        Assert.True(concurrent.ExitCode == 0, concurrent.ToString());

        List<System.Text.Json.JsonElement> Inbound() =>
            MeshCluster.Flows(mesh.Agent("node2")).Where(f => f.GetProperty("original_destination").GetString()!.EndsWith(":9090", StringComparison.Ordinal)).ToList();

        // A record is written when both directions have closed, which can be just after the client saw its reply.
        await CaptureScopeTests.WaitUntilAsync(() => Inbound().Count >= 500);
        var inbound = Inbound();
        Assert.Equal(500, inbound.Count);
        Assert.All(inbound, f => Assert.Equal("-", f.GetProperty("response_flags").GetString()));

        // 500 streams open at once, at most 100 per tunnel: at least 5 tunnels, and not one per stream.
        var tunnels = CountTunnels(server);
        Assert.InRange(tunnels, 5, 10);
    }

    [PrivilegedFact]
    public async Task TwoPodsOfOneServiceAccount_EachTunnelsFromItsOwnAddress_AndAPodThatLeavesTakesItsTunnelsWithIt()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), c => Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        var (a1, a2) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "a2"));
        Assert.Equal(a1.ServiceAccount, a2.ServiceAccount);
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "64");
        await Task.Delay(300);

        async Task SendAsync(ClusterPod from)
        {
            var run = await MeshCluster.RunPeerAsync(from, Long, "send", "--to", $"{server.Address}:8080", "--bytes", "1000", "--expect-reply-bytes", "64");
            Assert.True(run.ExitCode == 0, run.ToString());
        }

        await SendAsync(a1);
        await SendAsync(a2);

        // The pool keeps each tunnel open after its connection: the server's namespace shows who dialled them.
        Assert.Equal([a1.Address.ToString(), a2.Address.ToString()], TunnelPeers(server).Order());

        // a1 leaves: its tunnel closes; a2's stays and carries a2's next connection.
        var agent = mesh.Agent("node1");
        var applied = agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal));
        mesh.WriteInventory(mesh.Cluster.InventoryYaml(new InventoryOptions
        {
            Omit = [mesh.Cluster.Pod("demo", "x1"), a1],
            Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, server)],
        }));
        await CaptureScopeTests.WaitUntilAsync(() => agent.StderrLines.Count(l => l.Contains("inventory version", StringComparison.Ordinal)) > applied);
        await CaptureScopeTests.WaitUntilAsync(() => !TunnelPeers(server).Contains(a1.Address.ToString()), seconds: 30);
        await SendAsync(a2);
        Assert.Equal([a2.Address.ToString()], TunnelPeers(server));
    }

    /// <summary>The source addresses of established connections to the pod's tunnel port, seen inside its netns.</summary>
    private static List<string> TunnelPeers(ClusterPod pod) =>
        Run("ip", "netns", "exec", pod.NetnsName, "ss", "-Htn", "state", "established", "( sport = :15008 )")
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1])
            .Select(peer => peer[..peer.LastIndexOf(':')].Trim('[', ']'))
            .Select(peer => peer.StartsWith("::ffff:", StringComparison.Ordinal) ? peer[7..] : peer)
            .ToList();

    /// <summary>Established TCP connections to the pod's tunnel port, counted inside the pod's netns.</summary>
    private static int CountTunnels(ClusterPod pod)
    {
        var output = Run("ip", "netns", "exec", pod.NetnsName, "ss", "-Htn", "state", "established", "( sport = :15008 )");
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
    }

    private static string Run(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return output;
    }
}
