using System.Diagnostics;
using System.Globalization;
using k8s;
using k8s.Models;
using Weft.Cli;
using Weft.Inventory;
using Weft.Scale;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Bench;

/// <summary>
/// Issue 16's scale suite: the inventory sources of one agent against clusters of 10,000 / 50,000 / 100,000 pods
/// (one Service and EndpointSlice per 10 pods, none on the agent's node), from the wire-level fake API server and
/// from the standalone file. Reports per size: time to ready, the managed heap the inventory keeps, the process
/// RSS, bytes received from the API server at start and per minute of a churn of 100 pod changes per second,
/// and the latency from the API event to the published snapshot the data path reads (p50/p99).
/// In one process, sizes run in increasing order: RSS includes the bench's own fake API server and data
/// and never shrinks between sizes, so run one size per invocation for a clean RSS figure.
/// </summary>
internal static class ScaleBenchmark
{
    public const string Usage = """
        weft-bench --suite scale [--sizes 10000,50000,100000] [--churn-seconds 60] [--churn-rate 100]
          Inventory at scale (issue 16): per size, the cost of one change (incremental against a rebuild
          from scratch, same process), the Kubernetes source against the fake API server and the
          standalone file source; time to ready, inventory heap, RSS, API bytes at start and per minute of
          churn, event-to-snapshot latency p50/p99, apply time per change. One size per run gives a clean RSS.
        """;

    private const string Node = "bench-node";

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var sizes = (cl.Get("sizes") ?? "10000,50000,100000").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new UsageException("--sizes takes positive pod counts, comma-separated"))
            .ToList();
        var churnSeconds = cl.Int("churn-seconds", 60);
        var churnRate = cl.Int("churn-rate", 100);
        cl.Get("suite");
        cl.RejectUnknown();
        if (churnSeconds < 1 || churnRate < 1)
        {
            throw new UsageException("--churn-seconds and --churn-rate must be at least 1");
        }

        var rows = new List<string>();
        var costs = new List<string>();
        foreach (var pods in sizes)
        {
            costs.Add(ChangeCost(pods, changes: 400, rebuilds: 5));
            rows.Add(await KubernetesAsync(pods, churnSeconds, churnRate));
            rows.Add(File(pods));
        }

        Console.WriteLine();
        Console.WriteLine($"Cost of one change, same process, one after the other (load average {LoadAverage()}):");
        Console.WriteLine("| pods | incremental: change to published snapshot p50 / p99 | CPU per change | rebuild from scratch (before) p50 / max | CPU per rebuild | ratio (rebuild / incremental CPU) |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- |");
        foreach (var row in costs)
        {
            Console.WriteLine(row);
        }

        Console.WriteLine();
        Console.WriteLine($"Sources (load average {LoadAverage()}):");
        Console.WriteLine("| source | pods / services | ready | inventory heap | per pod | RSS | API bytes at start | API bytes per min of churn | event to snapshot p50 / p99 | apply time per change |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var row in rows)
        {
            Console.WriteLine(row);
        }

        return 0;
    }

    private static async Task<string> KubernetesAsync(int pods, int churnSeconds, int churnRate)
    {
        var cluster = new SyntheticCluster(pods);
        Say($"kubernetes {pods}: serving {pods} pods and {cluster.Services} services from the fake API server");
        await using var server = FakeApiServer.Start();
        foreach (var obj in cluster.Objects())
        {
            Apply(server, obj);
        }

        using var client = server.Client();
        var store = new InventoryStore();
        var publishes = new List<(long Version, long Ticks)>();
        store.Changed += snapshot =>
        {
            lock (publishes)
            {
                publishes.Add((snapshot.Version, Stopwatch.GetTimestamp()));
            }
        };

        // The fake API server holds its objects as parsed JSON that grows on its first read: one list of each kind
        // before measuring, so that growth (about 0.8 KiB per pod) is not counted as the agent's.
        await client.CoreV1.ListNamespaceAsync();
        await client.CoreV1.ListPodForAllNamespacesAsync();
        await client.CoreV1.ListServiceForAllNamespacesAsync();
        await client.DiscoveryV1.ListEndpointSliceForAllNamespacesAsync();
        var heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        var bytesBefore = server.BytesSent;
        var started = Stopwatch.StartNew();
        using var source = KubernetesInventorySource.Start(client, store, new KubernetesInventoryOptions { NodeName = Node });
        await source.WaitForReadyAsync();
        var ready = started.Elapsed;
        var startBytes = server.BytesSent - bytesBefore;
        var heap = GC.GetTotalMemory(forceFullCollection: true) - heapBefore;
        var rss = RssBytes();
        Say($"kubernetes {pods}: ready in {ready.TotalSeconds:0.00} s; churning {churnRate} pod changes/s for {churnSeconds} s");

        await server.WaitForWatchesAsync(TimeSpan.FromMinutes(1));
        var churnBytesBefore = server.BytesSent;
        var appliedBefore = source.AppliedChanges;
        var applyTimeBefore = source.ApplyTime;
        var changes = new List<(long Version, long Ticks)>();
        var interval = TimeSpan.FromSeconds(1.0 / churnRate);
        var churn = Stopwatch.StartNew();
        for (var i = 0; churn.Elapsed < TimeSpan.FromSeconds(churnSeconds); i++)
        {
            var due = interval * i;
            if (due > churn.Elapsed)
            {
                await Task.Delay(due - churn.Elapsed);
            }

            var version = store.Current.Version;
            var ticks = Stopwatch.GetTimestamp();
            var pod = (int)((long)i * 7919 % pods);
            var changed = cluster.Pod(pod, ready: i / pods % 2 == 0);
            changed.Metadata.Labels["churn"] = (i % 2).ToString(CultureInfo.InvariantCulture);
            server.Apply(changed);
            changes.Add((version, ticks));
        }

        await Task.Delay(TimeSpan.FromSeconds(1)); // the last changes' debounce
        var applied = source.AppliedChanges - appliedBefore;
        var applyPerChange = applied == 0 ? double.NaN : (source.ApplyTime - applyTimeBefore).TotalMilliseconds / applied;
        var churnBytesPerMinute = (server.BytesSent - churnBytesBefore) * 60.0 / churn.Elapsed.TotalSeconds;
        var latencies = new List<double>();
        lock (publishes)
        {
            foreach (var (version, ticks) in changes)
            {
                var seen = publishes.FirstOrDefault(p => p.Version > version && p.Ticks >= ticks);
                if (seen.Ticks != 0)
                {
                    latencies.Add(Stopwatch.GetElapsedTime(ticks, seen.Ticks).TotalMilliseconds);
                }
            }
        }

        latencies.Sort();
        return $"| kubernetes | {pods:N0} / {cluster.Services:N0} | {ready.TotalSeconds:0.00} s | {Mib(heap)} | {heap / pods:N0} B | {Mib(rss)} | {Mib(startBytes)} "
            + $"| {Mib((long)churnBytesPerMinute)} | {Percentile(latencies, 0.5):0} / {Percentile(latencies, 0.99):0} ms ({latencies.Count} changes) | {applyPerChange:0.000} ms ({applied} events) |";
    }

    private static string File(int pods)
    {
        var cluster = new SyntheticCluster(pods);
        var directory = Directory.CreateTempSubdirectory("weft-bench-scale-").FullName;
        try
        {
            var path = Path.Join(directory, "inventory.yaml");
            using (var writer = new StreamWriter(path))
            {
                cluster.WriteYaml(writer);
            }

            Say($"file {pods}: {new FileInfo(path).Length / 1024 / 1024} MiB of YAML");
            var store = new InventoryStore();
            var heapBefore = GC.GetTotalMemory(forceFullCollection: true);
            var started = Stopwatch.StartNew();
            using var source = FileInventorySource.Start(path, store, new FileInventorySourceOptions { PollInterval = TimeSpan.FromHours(1) });
            var ready = started.Elapsed;
            var heap = GC.GetTotalMemory(forceFullCollection: true) - heapBefore;
            var rss = RssBytes();

            // A file has no per-object events: one changed pod means reading the whole file again.
            System.IO.File.AppendAllText(path, "\n# one more line\n");
            var reload = Stopwatch.StartNew();
            source.Reload();
            var reloaded = reload.Elapsed;
            return $"| file | {pods:N0} / {cluster.Services:N0} | {ready.TotalSeconds:0.00} s | {Mib(heap)} | {heap / pods:N0} B | {Mib(rss)} | - | - | reload (read whole file, apply the difference) {reloaded.TotalMilliseconds:0} ms | - |";
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// What one change costs the agent, in this process and back to back so the machine's load weighs on both
    /// alike: the incremental inventory (apply one pod or EndpointSlice change, make and publish the snapshot)
    /// against a build of the whole snapshot from scratch, which is what every change cost before.
    /// </summary>
    private static string ChangeCost(int pods, int changes, int rebuilds)
    {
        var cluster = new SyntheticCluster(pods);
        var objects = cluster.Objects().ToList();
        var state = new InventoryState(Weft.Policy.PolicyKinds.DefaultMeshRootNamespace);
        foreach (var obj in objects)
        {
            state.Upsert(Id(obj), obj);
        }

        var store = new InventoryStore();
        store.Publish(state.Snapshot());
        Say($"change cost {pods}: {changes} incremental changes, then {rebuilds} builds from scratch");

        var latencies = new List<double>();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        for (var i = 0; i < changes; i++)
        {
            // Alternately a pod relabelled and one endpoint of a Service turning not ready (or back).
            var index = (int)((long)i * 7919 % pods);
            IKubernetesObject changed;
            if (i % 2 == 0)
            {
                var pod = cluster.Pod(index);
                pod.Metadata.Labels["churn"] = (i % 4).ToString(CultureInfo.InvariantCulture);
                changed = pod;
            }
            else
            {
                var service = index / SyntheticCluster.PodsPerService;
                var first = service * SyntheticCluster.PodsPerService;
                var members = Enumerable.Range(first, Math.Min(pods, first + SyntheticCluster.PodsPerService) - first);
                changed = cluster.EndpointSlice(service, members, i % 4 == 1 ? new HashSet<int> { index } : null);
            }

            var started = Stopwatch.GetTimestamp();
            state.Upsert(Id(changed), changed);
            store.Publish(state.Snapshot());
            latencies.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }

        var incrementalCpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds / changes;
        latencies.Sort();

        var rebuildTimes = new List<double>();
        cpu = Process.GetCurrentProcess().TotalProcessorTime;
        for (var i = 0; i < rebuilds; i++)
        {
            var started = Stopwatch.GetTimestamp();
            store.Publish(InventoryBuilder.Build(objects));
            rebuildTimes.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }

        var rebuildCpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds / rebuilds;
        rebuildTimes.Sort();
        return $"| {pods:N0} | {Percentile(latencies, 0.5):0.000} / {Percentile(latencies, 0.99):0.000} ms | {incrementalCpu:0.000} ms "
            + $"| {Percentile(rebuildTimes, 0.5):0} / {rebuildTimes[^1]:0} ms | {rebuildCpu:0} ms | {rebuildCpu / incrementalCpu:N0}x |";

        static string Id(IKubernetesObject obj) =>
            obj is IMetadata<V1ObjectMeta> { Metadata: { } metadata } ? $"{metadata.NamespaceProperty}/{metadata.Name}" : "";
    }

    private static string LoadAverage()
    {
        try
        {
            return string.Join(' ', System.IO.File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
        }
        catch (IOException)
        {
            return "unknown";
        }
    }

    private static void Apply(FakeApiServer server, IKubernetesObject obj)
    {
        switch (obj)
        {
            case V1Namespace ns: server.Apply(ns); break;
            case V1Pod pod: server.Apply(pod); break;
            case V1Service service: server.Apply(service); break;
            case V1EndpointSlice slice: server.Apply(slice); break;
        }
    }

    private static double Percentile(List<double> sorted, double p) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)(sorted.Count * p))];

    private static string Mib(long bytes) => $"{bytes / 1024.0 / 1024.0:0.0} MiB";

    private static long RssBytes()
    {
        foreach (var line in System.IO.File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture) * 1024;
            }
        }

        return 0;
    }

    private static void Say(string message) => Log.Info("bench", message);
}
