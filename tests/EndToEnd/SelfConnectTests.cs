using System.Text.Json;
using Weft.Harness;
using Xunit.Abstractions;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// No route makes an agent connect to itself. One connect to a remote pod's 15006 used to be delivered to
/// that pod's 15006 again and again (4,096 flows in 4 s); here every agent port, on a pod, a node and
/// loopback address, is tried by an ordinary process in a meshed pod and by an authenticated HBONE peer.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class SelfConnectTests(ITestOutputHelper output)
{
    private static readonly int[] AgentPorts = [15001, 15006, 15008, 15000, 15020, 15021];

    // Tries each HOST:PORT once as an unprivileged client would: connect, send a request, read. One JSON line each.
    private const string Probe = """
        import errno, json, socket, sys, time
        for target in sys.argv[1:]:
            host, port = target.rsplit(":", 1)
            started = time.time()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect((host, int(port)))
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = s.recv(4096)
                outcome = "data" if data else "closed"
                got = len(data)
            except ConnectionRefusedError:
                outcome, got = "refused", 0
            except (ConnectionResetError, BrokenPipeError):
                outcome, got = "reset", 0
            except socket.timeout:
                outcome, got = "timeout", 0
            finally:
                s.close()
            print(json.dumps({"target": target, "outcome": outcome, "bytes": got, "seconds": round(time.time() - started, 3)}), flush=True)
        """;

    [PrivilegedFact]
    public async Task UnprivilegedProcessInMeshedPod_ConnectingToAnyAgentPort_IsRefusedOnce_AndNoAgentLoops()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true);
        var a1 = mesh.Cluster.Pod("demo", "a1");
        var b1 = mesh.Cluster.Pod("demo", "b1");
        var (node1, node2) = (mesh.Agent("node1"), mesh.Agent("node2"));
        var targets = AgentPorts.Select(p => $"{b1.Address}:{p}")                        // a remote pod
            .Concat(AgentPorts.Select(p => $"{a1.Node.Address}:{p}"))                  // its own node
            .Concat(AgentPorts.Select(p => $"{b1.Node.Address}:{p}"))                  // another node
            .Concat(AgentPorts.Select(p => $"{a1.Address}:{p}"))                       // its own pod address
            .Concat(AgentPorts.Select(p => $"127.0.0.1:{p}"))                          // its own loopback
            .ToList();
        var (rss1, rss2) = (RssKiB(node1), RssKiB(node2));
        var (flows1, flows2) = (MeshCluster.Flows(node1).Count, MeshCluster.Flows(node2).Count);

        // uid/gid 65534 with no capabilities at all, as a default pod runs.
        await using var probe = a1.StartProcess("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--", TunnelPeer.Python, "-c", Probe, .. targets], null);
        var exit = await probe.WaitForExitAsync(TimeSpan.FromMinutes(3));
        Assert.True(exit == 0, $"probe failed:\n{probe.Stdout}\n{probe.Stderr}");
        var results = probe.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        foreach (var result in results)
        {
            output.WriteLine(result.ToString());
        }

        Assert.Equal(targets.Count, results.Count);

        // Refused at the first hop: no byte of any agent endpoint reaches the pod, nothing hangs.
        Assert.All(results, r => Assert.True(r.GetProperty("outcome").GetString() is "refused" or "reset" or "closed", r.ToString()));

        // Captured attempts are refused by a1's own agent before any tunnel or dial, each recorded once with the LOOP flag.
        // Records are written as connections end; on a loaded machine the last may come a while after the probe.
        var expected = targets.Count(t => !t.StartsWith("127.", StringComparison.Ordinal) && !t.StartsWith(a1.Address + ":", StringComparison.Ordinal)) + 3;
        await SettleAsync(() => MeshCluster.Flows(node1).Skip(flows1).Count(f => f.GetProperty("response_flags").GetString() == "LOOP") >= expected);
        var loops = MeshCluster.Flows(node1).Skip(flows1).Where(f => f.GetProperty("response_flags").GetString() == "LOOP").ToList();
        foreach (var target in targets.Where(t => !t.StartsWith("127.", StringComparison.Ordinal) && !t.StartsWith(a1.Address + ":", StringComparison.Ordinal)))
        {
            Assert.True(loops.Count(f => f.GetProperty("original_destination").GetString() == target) == 1,
                $"{target}: expected one LOOP record on node1, got:\n{string.Join('\n', loops)}");
        }

        // a1's own agent ports (its pod address and loopback) are not captured but reach the agent's listeners
        // directly: the in-pod inbound and outbound listeners refuse and record them, the tunnel port fails TLS.
        foreach (var port in new[] { 15006, 15001 })
        {
            Assert.Contains(loops, f => f.GetProperty("original_destination").GetString() == $"127.0.0.1:{port}");
        }

        Assert.Contains(loops, f => f.GetProperty("original_destination").GetString() == $"{a1.Address}:15006");

        // No loop anywhere: a handful of records at most per attempt, and memory flat.
        var (after1, after2) = (MeshCluster.Flows(node1).Count - flows1, MeshCluster.Flows(node2).Count - flows2);
        output.WriteLine($"records: node1 +{after1}, node2 +{after2} for {targets.Count} attempts; RSS node1 {rss1} -> {RssKiB(node1)} KiB, node2 {rss2} -> {RssKiB(node2)} KiB");
        Assert.True(after1 <= targets.Count, $"node1 wrote {after1} records for {targets.Count} attempts");
        Assert.True(after2 <= targets.Count, $"node2 wrote {after2} records for {targets.Count} attempts");
        Assert.True(RssKiB(node1) < rss1 + 16 * 1024 && RssKiB(node2) < rss2 + 16 * 1024, "an agent's memory grew by more than 16 MiB");
        Assert.False(node1.HasExited || node2.HasExited);
    }

    [PrivilegedFact]
    public async Task HbonePeerWithValidSvid_ConnectToAgentPorts_Gets400_AndNoAgentLoops()
    {
        await using var mesh = await MeshCluster.StartAsync(TunnelPeer.Spec(), c => TunnelPeer.Inventory(c), mtls: true);
        var b1 = mesh.Cluster.Pod("demo", "b1");
        var node2 = mesh.Agent("node2");
        using var tester = TunnelPeer.IssueSvid(mesh, "tester");
        var authorities = AgentPorts.Select(p => $"{b1.Address}:{p}")
            .Concat(AgentPorts.Select(p => $"127.0.0.1:{p}"))
            .Concat(AgentPorts.Select(p => $"{b1.Node.Address}:{p}"))
            .ToList();
        var rss = RssKiB(node2);
        var flows = MeshCluster.Flows(node2).Count;

        foreach (var authority in authorities)
        {
            var run = await TunnelPeer.RunAsync(mesh, "connect", [$"{b1.Address}:15008", authority], tester, "--streams", "1", "--bytes", "100", "--timeout", "10");
            var status = run.Single("stream").GetProperty("status").GetString();
            output.WriteLine($"CONNECT {authority}: {status}");
            Assert.True(status is ['4', _, _], $"CONNECT {authority}: expected a 4xx, got {status}\n{run}");
        }

        await SettleAsync(() => MeshCluster.Flows(node2).Skip(flows).Count(f => f.GetProperty("response_flags").GetString() == "LOOP") >= AgentPorts.Length);
        var records = MeshCluster.Flows(node2).Skip(flows).ToList();
        output.WriteLine($"{records.Count} records for {authorities.Count} CONNECTs; RSS {rss} -> {RssKiB(node2)} KiB");
        Assert.True(records.Count <= authorities.Count, string.Join('\n', records));
        foreach (var port in AgentPorts)
        {
            var record = Assert.Single(records, f => f.GetProperty("original_destination").GetString() == $"{b1.Address}:{port}");
            Assert.Equal("LOOP", record.GetProperty("response_flags").GetString());
            Assert.Contains("never connects to itself", record.GetProperty("error").GetString());
        }

        Assert.True(RssKiB(node2) < rss + 16 * 1024, "the agent's memory grew by more than 16 MiB");
        Assert.False(node2.HasExited);
    }

    /// <summary>Waits (at most 20 s) for <paramref name="enough"/>, then a second more for anything extra; the assertions that follow say what is missing.</summary>
    private static async Task SettleAsync(Func<bool> enough)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!enough() && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }

        await Task.Delay(1000);
    }

    private static long RssKiB(ManagedProcess process)
    {
        var line = File.ReadLines($"/proc/{process.Pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
    }
}
