using System.Globalization;
using System.Text.Json;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Seeing the mesh from outside: a real Prometheus scraping two agents, <c>weft flows --follow</c>
/// and the views run inside a node's network namespace against its agent's admin API.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class ObservabilityTests
{
    private const int PrometheusPort = 19090;
    private static readonly TimeSpan Long = TimeSpan.FromMinutes(2);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions
    {
        Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "b1"))],
    });

    private static Task<MeshCluster> StartAsync() =>
        MeshCluster.StartAsync(Spec(), Inventory, mtls: true, "--admin", "127.0.0.1:15000", "--metrics", ":15020");

    /// <summary>A client in the pod that writes <paramref name="chunks"/> x 64 KiB, one every <paramref name="pauseSeconds"/>, then closes.</summary>
    private static ManagedProcess Trickle(ClusterPod pod, string host, int port, int chunks, double pauseSeconds) =>
        pod.StartProcess("bash", "-c", string.Create(CultureInfo.InvariantCulture,
            $"exec 3<>/dev/tcp/{host}/{port} || exit 3; for i in $(seq 1 {chunks}); do head -c 65536 /dev/zero >&3 || exit 4; sleep {pauseSeconds}; done; exec 3>&-; echo done"));

    /// <summary>Runs a short command in the node's network namespace and returns its stdout.</summary>
    private static async Task<string> InNodeAsync(ClusterNode node, params string[] command)
    {
        await using var process = node.StartProcess(command[0], command[1..]);
        var exit = await process.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Assert.True(exit == 0, $"{string.Join(' ', command)} exited {exit}: {process.Stderr}");
        return process.Stdout;
    }

    private static async Task<string> WeftInNodeAsync(ClusterNode node, params string[] args)
    {
        await using var process = node.StartWeft(args);
        var exit = await process.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Assert.True(exit == 0, $"weft {string.Join(' ', args)} exited {exit}: {process.Stderr}");
        return process.Stdout;
    }

    private static async Task WaitForPrometheusAsync(ClusterNode node, ManagedProcess prometheus)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            Assert.False(prometheus.HasExited, $"prometheus exited: {prometheus.Stderr}");
            await using var probe = node.StartProcess("curl", "-sf", $"http://127.0.0.1:{PrometheusPort}/-/ready");
            if (await probe.WaitForExitAsync(TimeSpan.FromSeconds(10)) == 0)
            {
                return;
            }

            await Task.Delay(200);
        }

        throw new TimeoutException($"prometheus not ready within 60 s: {prometheus.Stderr}");
    }

    private static async Task<double?> QueryAsync(ClusterNode node, string promql)
    {
        var body = await InNodeAsync(node, "curl", "-sS", "--data-urlencode", $"query={promql}", $"http://127.0.0.1:{PrometheusPort}/api/v1/query");
        using var doc = JsonDocument.Parse(body);
        var result = doc.RootElement.GetProperty("data").GetProperty("result");
        return result.GetArrayLength() == 0 ? null : double.Parse(result[0].GetProperty("value")[1].GetString()!, CultureInfo.InvariantCulture);
    }

    private static async Task<double?> WaitForValueAsync(ClusterNode node, string promql, double expected, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        double? value = null;
        while (DateTime.UtcNow < deadline)
        {
            value = await QueryAsync(node, promql);
            if (value is { } v && Math.Abs(v - expected) <= expected * 0.01)
            {
                break;
            }

            await Task.Delay(500);
        }

        return value;
    }

    [PrivilegedFact]
    public async Task Prometheus_ScrapingTwoAgents_ReportsBytesBetweenNamedWorkloads_WithinOnePercent_EvenWhileOpen()
    {
        const int chunks = 40;
        const long trickled = chunks * 65536L;
        const long sent = 1_000_000;
        const long replied = 3_000_000;
        await using var mesh = await StartAsync();
        var node1 = mesh.Cluster.Nodes[0];
        var node2 = mesh.Cluster.Nodes[1];
        var server = mesh.Cluster.Pod("demo", "b1");
        var client = mesh.Cluster.Pod("demo", "a1");

        // The endpoint's output is valid exposition format.
        var exposition = await InNodeAsync(node1, "curl", "-sS", "http://127.0.0.1:15020/metrics");
        Assert.Contains("weft_enrolled_pods 1", exposition);
        var (check, checkOutput) = await Telemetry.TelemetryFixtures.PromtoolAsync(exposition + "\n", "check", "metrics");
        Assert.True(check == 0, checkOutput);

        var dir = Directory.CreateTempSubdirectory("weft-prometheus-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "prometheus.yml"), $"""
                global: {"{"}scrape_interval: 1s, evaluation_interval: 1s{"}"}
                scrape_configs:
                  - job_name: weft-agent
                    static_configs:
                      - targets: ["{node1.Address}:15020", "{node2.Address}:15020"]
                """);
            await using var prometheus = node1.StartProcess("prometheus", $"--config.file={dir}/prometheus.yml", $"--storage.tsdb.path={dir}/data",
                $"--web.listen-address=127.0.0.1:{PrometheusPort}");
            await using var quiet = await MeshCluster.StartServerAsync(server, "--port", "8080");
            await using var replying = await MeshCluster.StartServerAsync(server, "--port", "9090", "--reply-bytes", replied.ToString(CultureInfo.InvariantCulture));
            await WaitForPrometheusAsync(node1, prometheus);
            Assert.Equal(2, await WaitForValueAsync(node1, "count(up{job=\"weft-agent\"} == 1)", 2, TimeSpan.FromSeconds(60)));

            // A slow transfer through the service VIP: its bytes must show while the connection is open.
            const string request = "sum(istio_tcp_received_bytes_total{reporter=\"source\",source_workload=\"a1\",source_workload_namespace=\"demo\",destination_workload=\"b1\"})";
            await using var trickle = Trickle(client, "10.96.0.10", 80, chunks, 0.25);
            double? whileOpen = null;
            while (!trickle.HasExited)
            {
                whileOpen = await QueryAsync(node1, request);
                if (whileOpen is > 0 && !trickle.HasExited)
                {
                    break;
                }

                await Task.Delay(300);
            }

            Assert.True(whileOpen is > 0 and < trickled, $"bytes while the connection was open: {whileOpen}");
            Assert.False(trickle.HasExited, "the transfer ended before Prometheus saw any of its bytes");
            Assert.Equal(0, await trickle.WaitForExitAsync(Long));

            var run = await MeshCluster.RunPeerAsync(client, Long, "send", "--to", $"{server.Address}:9090",
                "--bytes", sent.ToString(CultureInfo.InvariantCulture), "--expect-reply-bytes", replied.ToString(CultureInfo.InvariantCulture));
            Assert.True(run.ExitCode == 0, run.ToString());

            // Request bytes (client to server) and response bytes, as both ends' agents report them.
            foreach (var reporter in new[] { "source", "destination" })
            {
                var selector = $"reporter=\"{reporter}\",source_workload=\"a1\",destination_workload=\"b1\"";
                var up = await WaitForValueAsync(node1, $"sum(istio_tcp_received_bytes_total{{{selector}}})", trickled + sent, TimeSpan.FromSeconds(30));
                Assert.True(up is { } u && Math.Abs(u - (trickled + sent)) <= (trickled + sent) * 0.01, $"{reporter}: request bytes {up}, sent {trickled + sent}");
                var down = await WaitForValueAsync(node1, $"sum(istio_tcp_sent_bytes_total{{{selector}}})", replied, TimeSpan.FromSeconds(30));
                Assert.True(down is { } d && Math.Abs(d - replied) <= replied * 0.01, $"{reporter}: response bytes {down}, replied {replied}");
                Assert.Equal(2, await WaitForValueAsync(node1, $"sum(istio_tcp_connections_closed_total{{{selector}}})", 2, TimeSpan.FromSeconds(30)));
            }

            // The service is named for the connection that used the VIP, and the identities are the pods' own.
            Assert.Equal(trickled, await QueryAsync(node1,
                "sum(istio_tcp_received_bytes_total{reporter=\"source\",destination_service=\"b.demo.svc.cluster.local\",source_principal=\"spiffe://cluster.local/ns/demo/sa/a\",destination_principal=\"spiffe://cluster.local/ns/demo/sa/b\",connection_security_policy=\"mutual_tls\"})"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [PrivilegedFact]
    public async Task WeftFlowsFollow_InTheNodeNetns_ShowsALiveFlowWithinASecond_AndItsBytesGrow()
    {
        await using var mesh = await StartAsync();
        var node1 = mesh.Cluster.Nodes[0];
        var server = mesh.Cluster.Pod("demo", "b1");
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080");
        await using var follow = node1.StartWeft("flows", "--follow", "-o", "json", "--from-pod", "demo/a1");
        await Task.Delay(2000); // the CLI process starts and polls
        Assert.False(follow.HasExited, follow.Stderr);

        var opened = DateTime.UtcNow;
        await using var trickle = Trickle(mesh.Cluster.Pod("demo", "a1"), server.Address.ToString(), 8080, 24, 0.25);
        JsonElement? first = null;
        while (first is null && DateTime.UtcNow - opened < TimeSpan.FromSeconds(5))
        {
            first = Lines(follow).Cast<JsonElement?>().FirstOrDefault(f => f!.Value.GetProperty("state").GetString() == "live");
            await Task.Delay(20);
        }

        var seen = DateTimeOffset.UtcNow;
        Assert.True(first is not null, $"no live flow in weft flows --follow; stderr: {follow.Stderr}");

        // Measured from the moment the agent took the connection (the flow's own start, same clock), not from the
        // launch of the client: starting bash in the pod's netns alone can take most of a second on a loaded machine.
        var seenAfter = seen - first.Value.GetProperty("start").GetDateTimeOffset();
        Assert.True(seenAfter < TimeSpan.FromSeconds(1), $"live flow shown {seenAfter.TotalMilliseconds:0} ms after the agent took the connection");
        Assert.Equal("demo/b1", first.Value.GetProperty("destination_workload").GetString());

        var id = first.Value.GetProperty("id").GetInt64();
        Assert.Equal(0, await trickle.WaitForExitAsync(Long));
        await Task.Delay(1000);
        var updates = Lines(follow).Where(f => f.GetProperty("id").GetInt64() == id).ToList();
        var live = updates.Where(f => f.GetProperty("state").GetString() == "live").Select(f => f.GetProperty("bytes_sent").GetInt64()).ToList();
        Assert.True(live.Count >= 3 && live[^1] > live[0], $"live byte counts: {string.Join(", ", live)}");
        Assert.Equal(24 * 65536L, updates[^1].GetProperty("bytes_sent").GetInt64());
        Assert.Equal("finished", updates[^1].GetProperty("state").GetString());

        // The views answer from the same agent; an unreachable admin address is one line.
        var workloads = await WeftInNodeAsync(node1, "workloads");
        // dual-stack pods: both addresses, IPv4 first
        Assert.Matches(@"demo\s+a1\s+10\.244\.\d+\.\d+,fd00:244:[0-9a-f]+::[0-9a-f]+\s+node1\s+a\s+HBONE", workloads);
        var certs = await WeftInNodeAsync(node1, "certs");
        Assert.Contains("spiffe://cluster.local/ns/demo/sa/a", certs);
        await using var unreachable = node1.StartWeft("flows", "--admin", "127.0.0.1:1");
        Assert.Equal(1, await unreachable.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        Assert.StartsWith("weft: cannot reach the Weft agent's admin API at 127.0.0.1:1", Assert.Single(unreachable.StderrLines));
    }

    private static List<JsonElement> Lines(ManagedProcess process) =>
        process.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList();
}
