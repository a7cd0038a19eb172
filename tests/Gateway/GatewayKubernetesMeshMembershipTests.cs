using System.Net;
using System.Reflection;
using k8s.Models;
using Weft.Gateway;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Gateway;

/// <summary>
/// The gateway in Kubernetes mode learns which backends are meshed from the cluster's Namespaces and Pods, with the
/// agent's enrollment rule, against the wire-level fake API server: the same objects that make an agent enroll a pod
/// make the gateway tunnel to it, and a label change is followed without a restart.
/// </summary>
public sealed class GatewayKubernetesMeshMembershipTests : IAsyncDisposable
{
    private const string Yaml = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: legacy}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
        spec: {nodeName: node2, serviceAccountName: cart-sa, containers: [{name: app, image: cart}]}
        status: {podIP: 10.244.2.7, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: opted-out, namespace: shop, labels: {app: batch, weft.dev/mesh: disabled}}
        spec: {nodeName: node2, serviceAccountName: batch, containers: [{name: app, image: batch}]}
        status: {podIP: 10.244.2.8, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: node-exporter, namespace: shop, labels: {app: exporter}}
        spec: {nodeName: node2, hostNetwork: true, serviceAccountName: exporter, containers: [{name: app, image: exporter}]}
        status: {podIP: 192.168.1.2, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: old-1, namespace: legacy, labels: {app: old}}
        spec: {nodeName: node2, serviceAccountName: old, containers: [{name: app, image: old}]}
        status: {podIP: 10.244.2.9, phase: Running}
        """;

    private static readonly MethodInfo ApplyMethod = typeof(FakeApiServer).GetMethods().Single(m => m.Name == nameof(FakeApiServer.Apply) && m.IsGenericMethodDefinition);
    private readonly FakeApiServer _api = FakeApiServer.Start();
    private GatewayKubernetesSource? _source;

    [Fact]
    public async Task MeshedPodsOfTheCluster_RideHbone_OthersPlaintext_AndLabelChangesAreFollowedWithoutARestart()
    {
        Apply(Yaml);
        var source = await StartAsync(meshMembership: true);

        Assert.Equal("spiffe://mesh.example/ns/shop/sa/cart-sa", Decide(source, "10.244.2.7"));
        Assert.Null(Decide(source, "10.244.2.8")); // the pod opted out
        Assert.Null(Decide(source, "192.168.1.2")); // host network
        Assert.Null(Decide(source, "10.244.2.9")); // namespace not enrolled
        Assert.Null(Decide(source, "10.244.3.3")); // no pod

        // The legacy namespace joins the mesh; a new pod arrives in shop; cart-1 goes away.
        Apply("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: legacy, labels: {weft.dev/mesh: enabled}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: cart-2, namespace: shop, labels: {app: cart}}
            spec: {nodeName: node1, serviceAccountName: cart-sa, containers: [{name: app, image: cart}]}
            status: {podIP: 10.244.1.5, phase: Running}
            """);
        Assert.True(_api.Delete<V1Pod>("shop", "cart-1"));

        await WaitUntilAsync(() => Decide(source, "10.244.2.9") == "spiffe://mesh.example/ns/legacy/sa/old"
            && Decide(source, "10.244.1.5") == "spiffe://mesh.example/ns/shop/sa/cart-sa"
            && Decide(source, "10.244.2.7") is null);
    }

    [Fact]
    public async Task WithoutAMeshIdentity_TheGatewayDoesNotWatchPods()
    {
        Apply(Yaml);
        var source = await StartAsync(meshMembership: false);

        Assert.Null(source.Mesh);
        Assert.DoesNotContain(_api.Requests, r => r.Path.StartsWith("/api/v1/pods", StringComparison.Ordinal));
    }

    [Fact]
    public async Task NoRouteIsServed_BeforeThePodsAreListed()
    {
        Apply(Yaml);
        var releasePods = _api.HoldLists("pods");
        _source = GatewayKubernetesSource.Start(_api.Client(), new GatewayMetrics("gw"), Options(meshMembership: true));
        await Task.Delay(1000);
        Assert.False(_source.Ready, "routes were served before the gateway knew which backends are meshed");

        releasePods();
        await _source.WaitForReadyAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal("spiffe://mesh.example/ns/shop/sa/cart-sa", Decide(_source, "10.244.2.7"));
    }

    public async ValueTask DisposeAsync()
    {
        _source?.Dispose();
        await _api.DisposeAsync();
    }

    private static string? Decide(GatewayKubernetesSource source, string address) =>
        GatewayMesh.Decide(source.Mesh!(), IPAddress.Parse(address), "mesh.example").Destination?.ToString();

    private static GatewayKubernetesOptions Options(bool meshMembership) => new()
    {
        Watch = new KubernetesInventoryOptions { NodeName = "gateway", InitialBackoff = TimeSpan.FromMilliseconds(50), MaxBackoff = TimeSpan.FromMilliseconds(500) },
        Debounce = TimeSpan.FromMilliseconds(20),
        WriteStatus = false,
        MeshMembership = meshMembership,
    };

    private async Task<GatewayKubernetesSource> StartAsync(bool meshMembership)
    {
        _source = GatewayKubernetesSource.Start(_api.Client(), new GatewayMetrics("gw"), Options(meshMembership));
        await _source.WaitForReadyAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return _source;
    }

    private void Apply(string yaml)
    {
        foreach (var obj in InventoryYaml.Load(yaml, "test.yaml", GatewayApiKinds.All))
        {
            ApplyMethod.MakeGenericMethod(obj.GetType()).Invoke(_api, [obj]);
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the gateway's view of the mesh did not follow the cluster within 20 s");
            await Task.Delay(50);
        }
    }
}
