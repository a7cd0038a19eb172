using System.Net;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Policy;
using static Weft.Tests.Inventory.Kubernetes.KubernetesObjects;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// <see cref="KubernetesInventorySource"/> through the real KubernetesClient against <see cref="FakeApiServer"/>:
/// the inventory follows the cluster within a second, survives 410 Gone, dropped watches and a restarted server,
/// and is published only after the first full sync.
/// </summary>
public sealed class KubernetesInventorySourceTests : IAsyncLifetime
{
    private const string Node = "node1";
    // How long a change may take to show before the test calls it lost: generous, since a loaded 2-core CI
    // machine can stall any process for seconds. How fast changes arrive is weft-bench --suite scale's figure.
    private static readonly TimeSpan Follow = TimeSpan.FromSeconds(15);
    private static readonly IPEndPoint Vip = IPEndPoint.Parse("10.96.0.10:80");

    private readonly InventoryStore _store = new();
    private FakeApiServer _server = null!;
    private IKubernetes _client = null!;
    private KubernetesInventorySource? _source;

    public Task InitializeAsync()
    {
        _server = FakeApiServer.Start();
        _client = _server.Client();
        _server.Apply(Namespace("demo", meshEnabled: true));
        _server.Apply(Pod("demo", "a1", Node, "10.244.1.2"));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        _source?.Dispose();
        _client.Dispose();
        await _server.DisposeAsync();
    }

    private KubernetesInventorySource Start(int pageSize = 500)
    {
        _source = KubernetesInventorySource.Start(_client, _store, new KubernetesInventoryOptions
        {
            NodeName = Node,
            InitialBackoff = TimeSpan.FromMilliseconds(50),
            MaxBackoff = TimeSpan.FromMilliseconds(300),
            ListPageSize = pageSize,
        });
        return _source;
    }

    private async Task<InventorySnapshot> SyncedAsync()
    {
        var source = _source ?? Start();
        await source.WaitForReadyAsync().WaitAsync(TimeSpan.FromSeconds(5));
        await _server.WaitForWatchesAsync(TimeSpan.FromSeconds(5));
        await WarmUpAsync();
        return _store.Current;
    }

    /// <summary>
    /// One object of every kind through the watches and out again, generously timed, so the "within a second"
    /// checks measure the steady state rather than first-use costs (JIT, JSON metadata) on a loaded machine.
    /// </summary>
    private async Task WarmUpAsync()
    {
        _server.Apply(Namespace("warmup", meshEnabled: false));
        _server.Apply(Pod("warmup", "w1", "node9", "10.244.9.9"));
        _server.Apply(Service("warmup", "w", "10.96.9.9", 80, 8080));
        _server.Apply(Slice("warmup", "w-1", "w", 8080, ("10.244.9.9", true)));
        _server.Apply(DenyAll("warmup", "w"));
        _server.Apply(Strict("warmup", "w"));
        var warm = IPEndPoint.Parse("10.96.9.9:80");
        await EventuallyAsync(s => s.TryGetNamespace("warmup", out _) && HasPod(s, "w1") && s.TryResolveService(warm, out var t) && t.ReadyEndpoints.Length == 1
            && s.Policies.AuthorizationPolicies.Length == 1 && s.Policies.PeerAuthentications.Length == 1, TimeSpan.FromSeconds(10), "warm-up objects");
        _server.Delete<V1Alpha1PeerAuthentication>("warmup", "w");
        _server.Delete<V1Alpha1AuthorizationPolicy>("warmup", "w");
        _server.Delete<V1EndpointSlice>("warmup", "w-1");
        _server.Delete<V1Service>("warmup", "w");
        _server.Delete<V1Pod>("warmup", "w1");
        _server.Delete<V1Namespace>(null, "warmup");
        await EventuallyAsync(s => !s.TryGetNamespace("warmup", out _) && !HasPod(s, "w1") && !s.TryResolveService(warm, out _)
            && s.Policies.AuthorizationPolicies.IsEmpty && s.Policies.PeerAuthentications.IsEmpty, TimeSpan.FromSeconds(10), "warm-up objects gone");
    }

    /// <summary>Waits until the published inventory satisfies <paramref name="condition"/>, failing after <paramref name="within"/>.</summary>
    private async Task<InventorySnapshot> EventuallyAsync(Func<InventorySnapshot, bool> condition, TimeSpan? within = null, string? what = null)
    {
        var deadline = DateTime.UtcNow + (within ?? Follow);
        while (true)
        {
            var current = _store.Current;
            if (condition(current))
            {
                return current;
            }

            if (DateTime.UtcNow > deadline)
            {
                var requests = string.Join("\n", _server.Requests.TakeLast(20));
                Assert.Fail($"inventory did not follow{(what is null ? "" : $" ({what})")} within {(within ?? Follow).TotalSeconds}s; "
                    + $"version {current.Version}, pods [{string.Join(", ", current.Workloads)}]; last requests:\n{requests}");
            }

            await Task.Delay(10);
        }
    }

    private static bool HasPod(InventorySnapshot s, string name) => s.Workloads.Any(w => w.Name == name);

    [Fact]
    public async Task Ready_OnlyAfterEveryKindIsListed_AndNothingIsPublishedBefore()
    {
        var release = _server.HoldLists("peerauthentications");
        var source = Start();
        await Task.Delay(500);

        Assert.False(source.Ready);
        Assert.Null(source.LastSync);
        Assert.Equal(0, _store.Current.Version);

        release();
        var snapshot = await SyncedAsync();
        Assert.True(source.Ready);
        Assert.NotNull(source.LastSync);
        Assert.True(snapshot.Version > 0);
        Assert.True(HasPod(snapshot, "a1"));
    }

    [Fact]
    public async Task FailingFirstLists_AreRetriedWithBackoff_UntilReady()
    {
        for (var i = 0; i < 3; i++)
        {
            _server.FailNext("pods", HttpStatusCode.InternalServerError);
        }

        _server.FailNext("authorizationpolicies", HttpStatusCode.NotFound); // CRD not installed yet
        var source = Start();
        await source.WaitForReadyAsync().WaitAsync(TimeSpan.FromSeconds(3));

        Assert.True(HasPod(_store.Current, "a1"));
        Assert.Equal(4, _server.Requests.Count(r => !r.Watch && r.Path == "/api/v1/pods"));
    }

    [Fact]
    public async Task Pods_AppearAndDisappear_InventoryFollows()
    {
        await SyncedAsync();

        _server.Apply(Pod("demo", "b1", "node2", "10.244.2.2"));
        var added = await EventuallyAsync(s => HasPod(s, "b1"));
        Assert.True(added.TryGetWorkload(IPAddress.Parse("10.244.2.2"), out var b1));
        Assert.Equal("node2", b1.NodeName);

        _server.Delete<V1Pod>("demo", "a1");
        var removed = await EventuallyAsync(s => !HasPod(s, "a1"));
        Assert.False(removed.TryGetWorkload(IPAddress.Parse("10.244.1.2"), out _));
        Assert.Empty(removed.GetLocalEnrolledWorkloads(Node));
    }

    [Fact]
    public async Task Namespace_LabelledAndUnlabelled_EnrollmentFollows()
    {
        var synced = await SyncedAsync();
        Assert.Single(synced.GetLocalEnrolledWorkloads(Node));

        _server.Apply(Namespace("demo", meshEnabled: false));
        await EventuallyAsync(s => s.GetLocalEnrolledWorkloads(Node).IsEmpty, what: "unlabelled");

        _server.Apply(Namespace("demo", meshEnabled: true));
        var again = await EventuallyAsync(s => s.GetLocalEnrolledWorkloads(Node).Length == 1, what: "labelled again");
        Assert.Equal("a1", again.GetLocalEnrolledWorkloads(Node)[0].Name);
    }

    [Fact]
    public async Task ServicesAndEndpointSlices_Change_VipResolutionFollows()
    {
        await SyncedAsync();

        _server.Apply(Service("demo", "b", "10.96.0.10", 80, 8080));
        _server.Apply(Slice("demo", "b-1", "b", 8080, ("10.244.2.2", true), ("10.244.2.3", false)));
        var resolved = await EventuallyAsync(s => s.TryResolveService(Vip, out var t) && t.ReadyEndpoints.Length == 1);
        Assert.True(resolved.TryResolveService(Vip, out var target));
        Assert.Equal(IPEndPoint.Parse("10.244.2.2:8080"), Assert.Single(target.ReadyEndpoints));

        // the second endpoint turns ready: both are used
        _server.Apply(Slice("demo", "b-1", "b", 8080, ("10.244.2.2", true), ("10.244.2.3", true)));
        await EventuallyAsync(s => s.TryResolveService(Vip, out var t) && t.ReadyEndpoints.Length == 2, what: "endpoint ready");

        _server.Delete<V1EndpointSlice>("demo", "b-1");
        await EventuallyAsync(s => s.TryResolveService(Vip, out var t) && t.ReadyEndpoints.IsEmpty, what: "slice deleted");

        _server.Delete<V1Service>("demo", "b");
        await EventuallyAsync(s => !s.TryResolveService(Vip, out _), what: "service deleted");
    }

    [Fact]
    public async Task PolicyCustomResources_AppearAndDisappear()
    {
        await SyncedAsync();

        _server.Apply(DenyAll("demo", "deny-all"));
        _server.Apply(Strict("demo", "strict"));
        var withPolicies = await EventuallyAsync(s => s.Policies.AuthorizationPolicies.Length == 1 && s.Policies.PeerAuthentications.Length == 1);
        Assert.Contains("deny-all", withPolicies.Policies.AuthorizationPolicies[0]);

        _server.Delete<V1Alpha1AuthorizationPolicy>("demo", "deny-all");
        await EventuallyAsync(s => s.Policies.AuthorizationPolicies.IsEmpty);
    }

    [Fact]
    public async Task Gone410_AfterCompactionWhileDisconnected_RelistsAndTheStateIsRight()
    {
        await SyncedAsync();
        var listsBefore = _server.Requests.Count(r => !r.Watch && r.Path.EndsWith("/pods", StringComparison.Ordinal));

        // While the agent is cut off, a pod goes and another comes, and the history it would resume from is compacted.
        await _server.StopAsync();
        _server.Delete<V1Pod>("demo", "a1");
        _server.Apply(Pod("demo", "a2", Node, "10.244.1.3"));
        _server.Compact();
        _server.Resume();

        var after = await EventuallyAsync(s => HasPod(s, "a2") && !HasPod(s, "a1"), TimeSpan.FromSeconds(3));
        Assert.Equal(["a2"], after.GetLocalEnrolledWorkloads(Node).Select(w => w.Name));
        Assert.True(_server.Requests.Count(r => !r.Watch && r.Path.EndsWith("/pods", StringComparison.Ordinal)) > listsBefore, "pods were listed again after 410");
        Assert.True(_source!.Ready);
    }

    [Fact]
    public async Task Gone410_AsAnErrorEventOnAnOpenWatch_RelistsAndKeepsFollowing()
    {
        await SyncedAsync();
        _server.Compact();
        _server.ExpireWatches();
        _server.Apply(Pod("demo", "a3", Node, "10.244.1.4"));

        await EventuallyAsync(s => HasPod(s, "a3"), what: "pod added after the relist");
        await _server.WaitForWatchesAsync(TimeSpan.FromSeconds(2));
        _server.Delete<V1Pod>("demo", "a3");
        await EventuallyAsync(s => !HasPod(s, "a3"), what: "pod deleted on the new watch");
    }

    [Fact]
    public async Task Gone410_AsTheHttpStatusOfAWatch_Relists()
    {
        await SyncedAsync();
        var listsBefore = _server.Requests.Count(r => !r.Watch && r.Path.EndsWith("/pods", StringComparison.Ordinal));
        _server.FailNext("pods", HttpStatusCode.Gone);
        _server.DropWatches();
        _server.Apply(Pod("demo", "a4", Node, "10.244.1.5"));

        await EventuallyAsync(s => HasPod(s, "a4"));
        Assert.True(_server.Requests.Count(r => !r.Watch && r.Path.EndsWith("/pods", StringComparison.Ordinal)) > listsBefore);
    }

    [Fact]
    public async Task DroppedWatch_ReconnectsAndResumesFromTheLastResourceVersion_WithoutRelisting()
    {
        await SyncedAsync();
        var requestsBefore = _server.Requests.Count;
        _server.Apply(Pod("demo", "a5", Node, "10.244.1.6"));
        await EventuallyAsync(s => HasPod(s, "a5"));
        var lastSeen = _server.CurrentResourceVersion;

        _server.DropWatches();
        _server.Apply(Pod("demo", "a6", Node, "10.244.1.7"));
        await EventuallyAsync(s => HasPod(s, "a6"), what: "change made while the watch was down");

        var resumed = _server.Requests.Skip(requestsBefore).Where(r => r.Path.EndsWith("/pods", StringComparison.Ordinal)).ToList();
        Assert.All(resumed, r => Assert.True(r.Watch, $"unexpected {r}"));
        Assert.Contains(resumed, r => r.ResourceVersion == lastSeen);
    }

    [Fact]
    public async Task Bookmark_MovesTheResumePointOfAQuietKind()
    {
        await SyncedAsync();
        _server.Apply(Pod("demo", "a7", Node, "10.244.1.8")); // moves the global resourceVersion, not the namespaces'
        await EventuallyAsync(s => HasPod(s, "a7"));
        _server.Bookmark();
        var bookmark = _server.CurrentResourceVersion;
        await Task.Delay(200);
        var requestsBefore = _server.Requests.Count;

        _server.DropWatches();
        await _server.WaitForWatchesAsync(TimeSpan.FromSeconds(3));

        var namespaceWatch = _server.Requests.Skip(requestsBefore).First(r => r.Path == "/api/v1/namespaces");
        Assert.True(namespaceWatch.Watch);
        Assert.Equal(bookmark, namespaceWatch.ResourceVersion);
        Assert.Equal("true", namespaceWatch.Query["allowWatchBookmarks"]);
    }

    [Fact]
    public async Task ApiServerRestart_KeepsTheLastGoodInventory_ThenFollowsAgain()
    {
        var synced = await SyncedAsync();
        await _server.StopAsync();
        await Task.Delay(700);

        Assert.Equal(synced.Version, _store.Current.Version);
        Assert.True(HasPod(_store.Current, "a1"));
        Assert.True(_source!.Ready);

        _server.Resume();
        await _server.WaitForWatchesAsync(TimeSpan.FromSeconds(3));
        _server.Apply(Pod("demo", "a8", Node, "10.244.1.9"));
        await EventuallyAsync(s => HasPod(s, "a8") && HasPod(s, "a1"));
    }

    [Fact]
    public async Task ConstantChurn_IsPublishedWhileItLasts_NotOnlyWhenItStops()
    {
        // A change every 30 ms never leaves the 100 ms debounce a quiet moment; snapshots must come anyway.
        var synced = await SyncedAsync();
        var publishedDuringChurn = new List<long>();
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(2.5);
        for (var i = 0; DateTime.UtcNow < until; i++)
        {
            _server.Apply(Pod("demo", $"churn{i}", "node2", $"10.244.3.{(i % 250) + 2}"));
            if (_store.Current.Version != synced.Version && !publishedDuringChurn.Contains(_store.Current.Version))
            {
                publishedDuringChurn.Add(_store.Current.Version);
            }

            await Task.Delay(30);
        }

        Assert.True(publishedDuringChurn.Count >= 2, $"only {publishedDuringChurn.Count} snapshot(s) published during 2.5 s of constant change");
    }

    [Fact]
    public async Task LargeLists_ArriveInPages()
    {
        for (var i = 10; i < 17; i++)
        {
            _server.Apply(Pod("demo", $"p{i}", "node2", $"10.244.2.{i}"));
        }

        Start(pageSize: 3);
        var synced = await SyncedAsync();
        Assert.Equal(8, synced.Workloads.Length);
        Assert.Contains(_server.Requests, r => r.Query.ContainsKey("continue"));
    }

    [Fact]
    public async Task Pods_CarryWhatTheClusterSaysForNetnsDiscovery_NeverANetnsAnnotation()
    {
        // The node finds a local pod's namespace from its cgroup (LocalNetnsTests); the inventory only passes on
        // the pod's UID, QoS class and phase, and drops a weft.dev/netns that anyone who may edit a pod could set.
        var evil = new Dictionary<string, string> { [InventoryBuilder.NetnsAnnotation] = "/proc/1/ns/net", ["weft.dev/fail-open"] = "true" };
        _server.Apply(Pod("demo", "a2", Node, "10.244.1.3", uid: "uid-a2", qos: "Guaranteed", annotations: evil));
        _server.Apply(Pod("demo", "b1", "node2", "10.244.2.2", uid: "uid-b1", annotations: evil));

        var synced = await SyncedAsync();
        Assert.True(synced.TryGetWorkload(IPAddress.Parse("10.244.1.3"), out var local));
        Assert.Null(local.NetnsPath);
        Assert.True(local.FailOpen); // the other weft.dev annotations stay
        Assert.Equal(("uid-a2", "Guaranteed", "Running"), (local.Uid, local.QosClass, local.Phase));
        Assert.True(synced.TryGetWorkload(IPAddress.Parse("10.244.2.2"), out var remote));
        Assert.Null(remote.NetnsPath);
        Assert.Equal("uid-b1", remote.Uid);
    }
}
