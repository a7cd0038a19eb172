using System.Diagnostics;
using System.Net;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Scale;
using Weft.Tests.Inventory.Kubernetes;
using Xunit.Abstractions;

namespace Weft.Tests.Scale;

/// <summary>
/// The Kubernetes source against a 10,000-pod cluster served by the wire-level fake API server: it lists
/// everything in pages, becomes ready, then follows a churn of pod and endpoint changes, the last of which
/// (a pod added behind a Service) resolves through the service VIP.
/// </summary>
[Collection(ScaleMemoryCollection.Name)]
public sealed class KubernetesScaleTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Pods = 10_000;
    private static readonly TimeSpan Generous = TimeSpan.FromMinutes(5);

    private readonly InventoryStore _store = new();
    private readonly SyntheticCluster _cluster = new(Pods);
    private FakeApiServer _server = null!;
    private IKubernetes _client = null!;
    private KubernetesInventorySource? _source;

    public Task InitializeAsync()
    {
        _server = FakeApiServer.Start();
        _client = _server.Client();
        foreach (var obj in _cluster.Objects())
        {
            switch (obj)
            {
                case V1Namespace ns: _server.Apply(ns); break;
                case V1Pod pod: _server.Apply(pod); break;
                case V1Service service: _server.Apply(service); break;
                case V1EndpointSlice slice: _server.Apply(slice); break;
            }
        }

        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        _source?.Dispose();
        _client.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task TenThousandPodClusterSyncsThenFollowsAChurnToThePodAddedLast()
    {
        var started = Stopwatch.StartNew();
        _source = KubernetesInventorySource.Start(_client, _store, new KubernetesInventoryOptions { NodeName = "weft-test-node" });
        await _source.WaitForReadyAsync().WaitAsync(Generous);
        output.WriteLine($"ready after {started.Elapsed.TotalSeconds:0.0} s with {_store.Current.Workloads.Length} pods");
        Assert.Equal(Pods, _store.Current.Workloads.Length);
        Assert.Equal(_cluster.Services, _store.Current.Services.Length);
        await _server.WaitForWatchesAsync(Generous);

        // Churn: 100 changes of the kinds a cluster makes all day, then one more pod behind service 0.
        var latencies = new List<double>();
        for (var i = 0; i < 100; i++)
        {
            var before = _store.Current.Version;
            var change = Stopwatch.StartNew();
            var pod = i * 97 % Pods;
            switch (i % 4)
            {
                case 0: // a pod goes away
                    _server.Delete<V1Pod>(_cluster.PodNamespace(pod), _cluster.PodName(pod));
                    break;
                case 1: // a pod stops being ready: its endpoint follows
                    _server.Apply(_cluster.Pod(pod, ready: false));
                    _server.Apply(_cluster.EndpointSlice(pod / SyntheticCluster.PodsPerService, Range(pod), notReady: new HashSet<int> { pod }));
                    break;
                case 2: // an endpoint is removed
                    _server.Apply(_cluster.EndpointSlice(pod / SyntheticCluster.PodsPerService, Range(pod).Where(p => p != pod)));
                    break;
                default: // a pod is relabelled
                    var relabelled = _cluster.Pod(pod);
                    relabelled.Metadata.Labels["version"] = "v2";
                    _server.Apply(relabelled);
                    break;
            }

            await _store.WaitForVersionAfterAsync(before).WaitAsync(Generous);
            latencies.Add(change.Elapsed.TotalMilliseconds);
        }

        var added = new SyntheticCluster(Pods + 1);
        var last = Pods; // a new pod, in a new service's range: service Pods / 10 gets it as its only endpoint
        var addedAt = Stopwatch.StartNew();
        _server.Apply(added.Pod(last));
        _server.Apply(added.Service(last / SyntheticCluster.PodsPerService));
        _server.Apply(added.EndpointSlice(last / SyntheticCluster.PodsPerService, [last]));

        var vip = new IPEndPoint(SyntheticCluster.ServiceAddress(last / SyntheticCluster.PodsPerService), SyntheticCluster.ServicePort);
        var target = await EventuallyAsync(() => _store.Current.TryResolveService(vip, out var t) && t.ReadyEndpoints.Length == 1 ? t : null);
        output.WriteLine($"pod added last resolves after {addedAt.Elapsed.TotalMilliseconds:0} ms");
        Assert.Equal(new IPEndPoint(SyntheticCluster.PodAddress(last), SyntheticCluster.TargetPort), target.Pick());
        Assert.True(_store.Current.TryGetWorkload(SyntheticCluster.PodAddress(last), out var workload));
        Assert.Equal(added.PodName(last), workload.Name);

        // What the churn did is what the snapshot says.
        var snapshot = _store.Current;
        Assert.Equal(Pods - 25 + 1, snapshot.Workloads.Length);
        Assert.False(snapshot.TryGetWorkload(SyntheticCluster.PodAddress(0), out _)); // deleted at i = 0
        Assert.True(snapshot.TryGetWorkload(SyntheticCluster.PodAddress(3 * 97), out var relabelledPod));
        Assert.Equal("v2", relabelledPod.Labels["version"]);
        latencies.Sort();
        output.WriteLine($"change to snapshot: p50 {latencies[latencies.Count / 2]:0} ms, p99 {latencies[(int)(latencies.Count * 0.99)]:0} ms (debounce 100 ms included)");
    }

    private static IEnumerable<int> Range(int pod)
    {
        var first = pod / SyntheticCluster.PodsPerService * SyntheticCluster.PodsPerService;
        return Enumerable.Range(first, SyntheticCluster.PodsPerService);
    }

    private async Task<T> EventuallyAsync<T>(Func<T?> probe) where T : class
    {
        var deadline = DateTime.UtcNow + Generous;
        while (true)
        {
            if (probe() is { } value)
            {
                return value;
            }

            Assert.True(DateTime.UtcNow < deadline, $"not within {Generous}; inventory version {_store.Current.Version}");
            await Task.Delay(20);
        }
    }
}
