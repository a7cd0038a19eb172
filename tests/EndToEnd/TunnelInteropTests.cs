using System.Runtime.CompilerServices;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Weft.Harness;
using Weft.Identity;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// A real agent's tunnel port (15008) against an HBONE client that is not Weft: python3-h2 over Python's
/// ssl, holding a test SVID from the mesh CA. It runs in demo/x1, a pod left out of the inventory, so
/// capture never touches it: what reaches b1's agent is exactly what Python wrote.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class TunnelInteropTests
{
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private const string DenyTester = """

        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: deny-intruder, namespace: demo}
        spec:
          selector: {matchLabels: {app: b}}
          action: DENY
          rules:
          - from: [{source: {principals: ["cluster.local/ns/demo/sa/intruder"]}}]
        """;

    [PrivilegedFact]
    public async Task PythonH2Client_WithTestSvid_ExchangesDataWithThePod_OnConcurrentStreams_RecordedAsItsPrincipal()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await TunnelPeer.StartEchoServerAsync(server);
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");

        // A 16 KiB receive window: the agent must follow our flow control and WINDOW_UPDATEs to send 256+ KiB back.
        var run = await TunnelPeer.RunAsync(mesh, "connect", [$"{server.Address}:15008", $"{server.Address}:8080"], tester,
            "--streams", "3", "--bytes", "262144", "--window", "16384");

        var tunnel = run.Single("tunnel");
        Assert.Equal("TLSv1.3", tunnel.GetProperty("tls").GetString());
        Assert.Equal("h2", tunnel.GetProperty("alpn").GetString());
        Assert.Equal(["spiffe://cluster.local/ns/demo/sa/b"], tunnel.GetProperty("server_uris").EnumerateArray().Select(u => u.GetString()));
        Assert.True(tunnel.GetProperty("ping_acked").GetBoolean(), run.ToString());
        var settings = tunnel.GetProperty("settings");
        Assert.Equal(100, settings.GetProperty("MAX_CONCURRENT_STREAMS").GetInt32());
        Assert.Equal(4 * 1024 * 1024, settings.GetProperty("INITIAL_WINDOW_SIZE").GetInt32());
        Assert.Equal(16 * 1024 * 1024, tunnel.GetProperty("connection_window").GetInt32());

        var streams = run.All("stream");
        Assert.Equal(3, streams.Count);
        long[] sizes = [262144, 262144 + 4099, 262144 + 2 * 4099];
        foreach (var stream in streams)
        {
            Assert.True(stream.GetProperty("status").GetString() == "200", run.ToString());
            Assert.True(stream.GetProperty("identical").GetBoolean(), $"echo differs on a stream:\n{run}");
            Assert.True(stream.GetProperty("ended").GetBoolean(), run.ToString());
            Assert.Equal(JsonValueKind.Null, stream.GetProperty("reset").ValueKind);
        }

        Assert.Equal(sizes, streams.Select(s => s.GetProperty("received").GetInt64()).Order());
        Assert.Equal(JsonValueKind.Null, run.Single("done").GetProperty("goaway").ValueKind);

        // One inbound record per stream, naming the tester's principal and the bytes that crossed.
        var agent = mesh.Agent("node2");
        await CaptureScopeTests.WaitUntilAsync(() => TunnelPeer.InboundFrom(agent, "tester").Count == 3);
        var flows = TunnelPeer.InboundFrom(agent, "tester");
        Assert.All(flows, f =>
        {
            Assert.Equal("-", f.GetProperty("response_flags").GetString());
            Assert.Equal("mutual_tls", f.GetProperty("connection_security_policy").GetString());
            Assert.Equal("spiffe://cluster.local/ns/demo/sa/b", f.GetProperty("destination_principal").GetString());
            Assert.Equal("demo/b1", f.GetProperty("destination_workload").GetString());
            Assert.Equal($"{server.Address}:8080", f.GetProperty("original_destination").GetString());
        });
        Assert.Equal(sizes, flows.Select(f => f.GetProperty("bytes_sent").GetInt64()).Order());
        Assert.Equal(sizes, flows.Select(f => f.GetProperty("bytes_received").GetInt64()).Order());
        Assert.Equal(3, TunnelPeer.Served(serve));
    }

    [PrivilegedFact]
    public async Task PythonH2Client_DeniedPrincipal_Gets403_AndTheAppSeesNothing_WhileAnotherPrincipalGetsThrough()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c, DenyTester), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await TunnelPeer.StartEchoServerAsync(server);
        using var intruder = TunnelPeer.IssueSvid(mesh, "intruder");
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");
        var target = new[] { $"{server.Address}:15008", $"{server.Address}:8080" };

        var denied = await TunnelPeer.RunAsync(mesh, "connect", target, intruder, "--streams", "1", "--bytes", "1000");

        var stream = denied.Single("stream");
        Assert.True(stream.GetProperty("status").GetString() == "403", denied.ToString());
        Assert.Equal(0, stream.GetProperty("received").GetInt64());
        var agent = mesh.Agent("node2");
        var record = await PodTrafficTests.WaitForFlowAsync(agent, f => f.GetProperty("response_flags").GetString() == "DENY");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/intruder", record.GetProperty("source_principal").GetString());
        Assert.Contains("demo/deny-intruder", record.GetProperty("error").GetString());
        Assert.Equal(0, record.GetProperty("bytes_sent").GetInt64());

        // Same tunnel port, same policy, another principal: admitted, and only its connection reaches the app.
        var admitted = await TunnelPeer.RunAsync(mesh, "connect", target, tester, "--streams", "1", "--bytes", "1000");
        Assert.True(admitted.Single("stream").GetProperty("identical").GetBoolean(), admitted.ToString());
        await CaptureScopeTests.WaitUntilAsync(() => TunnelPeer.Served(serve) >= 1);
        await Task.Delay(300);
        Assert.Equal(1, TunnelPeer.Served(serve));
    }

    [PrivilegedFact]
    public async Task PythonH2Client_ConnectNamingAnotherAddress_Gets400_AndNothingIsDialled()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true);
        var server = mesh.Cluster.Pod("demo", "b1");
        var elsewhere = mesh.Cluster.Pod("demo", "a1");
        await using var serve = await TunnelPeer.StartEchoServerAsync(elsewhere);
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");

        // b1's agent must not become an open relay to whatever :authority names.
        var run = await TunnelPeer.RunAsync(mesh, "connect", [$"{server.Address}:15008", $"{elsewhere.Address}:8080"], tester,
            "--streams", "1", "--bytes", "1000");

        Assert.True(run.Single("stream").GetProperty("status").GetString() == "400", run.ToString());
        var record = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("response_flags").GetString() == "CONNECT");
        Assert.Contains("does not name this pod", record.GetProperty("error").GetString());
        await Task.Delay(300);
        Assert.Equal(0, TunnelPeer.Served(serve));
    }
}

/// <summary>The Python HBONE peer (tests/EndToEnd/peers/hbone_peer.py) run from demo/x1, and the files it needs.</summary>
internal static class TunnelPeer
{
    public const string Python = "/usr/bin/python3";

    public static string Script([CallerFilePath] string here = "") =>
        Path.Combine(Path.GetDirectoryName(here)!, "peers", "hbone_peer.py");

    /// <summary>b1 alone on node2; x1 on node1 is outside the mesh (not in the inventory) and hosts the peer.</summary>
    public static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    public static string Inventory(NetnsCluster c, string extra = "") => c.InventoryYaml(new InventoryOptions
    {
        Omit = [c.Pod("demo", "x1")],
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "b1"))],
    }) + extra;

    /// <summary>Starts <c>weft app serve --mode echo</c> in the pod and waits until it listens.</summary>
    public static async Task<ManagedProcess> StartEchoServerAsync(ClusterPod pod, int port = 8080)
    {
        return await MeshCluster.StartServerAsync(pod, "--port", port.ToString(), "--mode", "echo");
    }

    /// <summary>Connections the app served (one JSON line each, besides its "listening" line).</summary>
    public static int Served(ManagedProcess server) => server.StdoutLines.Count(l => l.Contains("\"remote\"", StringComparison.Ordinal));

    /// <summary>Inbound records on an agent whose client presented spiffe://cluster.local/ns/demo/sa/<paramref name="serviceAccount"/>.</summary>
    public static List<JsonElement> InboundFrom(ManagedProcess agent, string serviceAccount) =>
        MeshCluster.Flows(agent).Where(f => f.GetProperty("direction").GetString() == "inbound"
            && f.GetProperty("source_principal").GetString() == $"spiffe://{MeshCluster.TrustDomain}/ns/demo/sa/{serviceAccount}").ToList();

    /// <summary>An SVID for demo/<paramref name="serviceAccount"/> from the mesh CA, as PEM files a non-.NET client can load.</summary>
    public static SvidFiles IssueSvid(MeshCluster mesh, string serviceAccount) =>
        IssueSvid(CertificateAuthority.Load(mesh.Ca!), mesh.Ca!.TrustBundlePath, serviceAccount);

    public static SvidFiles IssueSvid(CertificateAuthority authority, string trustBundlePath, string serviceAccount)
    {
        var svid = new SvidIssuer().Issue(authority, new SpiffeId(MeshCluster.TrustDomain, "demo", serviceAccount));
        var directory = Directory.CreateTempSubdirectory("weft-svid-").FullName;
        var files = new SvidFiles(directory, Path.Combine(directory, "svid.crt"), Path.Combine(directory, "svid.key"), trustBundlePath);
        File.WriteAllText(files.CertificatePath, svid.ChainPem());
        using var key = svid.Certificate.GetECDsaPrivateKey()!;
        File.WriteAllText(files.KeyPath, key.ExportPkcs8PrivateKeyPem());
        return files;
    }

    /// <summary>Runs the peer in demo/x1 to completion and returns its JSON lines.</summary>
    public static async Task<PeerReport> RunAsync(MeshCluster mesh, string mode, string[] positional, SvidFiles svid, params string[] options)
    {
        string[] args = [Script(), mode, .. positional, "--cert", svid.CertificatePath, "--key", svid.KeyPath, "--ca", svid.TrustBundlePath, .. options];
        await using var process = mesh.Cluster.Pod("demo", "x1").StartProcess(Python, args);
        int exit;
        try
        {
            exit = await process.WaitForExitAsync(TimeSpan.FromMinutes(2));
        }
        catch (TimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"python peer did not finish:\n{process.Stdout}\n{process.Stderr}");
        }

        var report = new PeerReport(exit, process.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList(), process.Stderr);
        Assert.True(exit == 0, report.ToString());
        return report;
    }
}

internal sealed record SvidFiles(string Directory, string CertificatePath, string KeyPath, string TrustBundlePath) : IDisposable
{
    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}

internal sealed record PeerReport(int ExitCode, List<JsonElement> Lines, string Stderr)
{
    public List<JsonElement> All(string kind) => Lines.Where(l => l.GetProperty("kind").GetString() == kind).ToList();

    public JsonElement Single(string kind)
    {
        var matching = All(kind);
        Assert.True(matching.Count == 1, $"expected one \"{kind}\" line:\n{this}");
        return matching[0];
    }

    public override string ToString() => $"exit {ExitCode}\n{string.Join('\n', Lines)}\n{Stderr}";
}
