using System.Net;
using k8s;
using Weft.Hbone;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>Where an outbound connection goes, decided from the inventory alone (RouteDecision).</summary>
public class RouteDecisionTests
{
    private const string TrustDomain = "cluster.local";

    private static InventorySnapshot Snapshot() => InventoryBuilder.Build(KubernetesYaml.LoadAllFromString("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: plain}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a1, namespace: demo}
        spec: {nodeName: node1, serviceAccountName: client}
        status: {podIP: 10.244.1.2, hostIP: 10.0.0.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a2, namespace: demo}
        spec: {nodeName: node1, serviceAccountName: neighbour}
        status: {podIP: 10.244.1.3, hostIP: 10.0.0.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b1, namespace: demo}
        spec: {nodeName: node2, serviceAccountName: server}
        status: {podIP: 10.244.2.2, hostIP: 10.0.0.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b2, namespace: demo}
        spec: {nodeName: node2, serviceAccountName: server}
        status: {podIP: 10.244.2.3, hostIP: 10.0.0.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: outside, namespace: plain}
        spec: {nodeName: node2}
        status: {podIP: 10.244.2.9, hostIP: 10.0.0.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: hostnet, namespace: demo}
        spec: {nodeName: node2, hostNetwork: true}
        status: {podIP: 10.0.0.2, hostIP: 10.0.0.2}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: server, namespace: demo}
        spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: server-1, namespace: demo, labels: {kubernetes.io/service-name: server}}
        addressType: IPv4
        endpoints:
        - addresses: [10.244.2.2]
        - addresses: [10.244.2.3]
        ports: [{port: 8080}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: idle, namespace: demo}
        spec: {clusterIP: 10.96.0.11, ports: [{port: 80, targetPort: 8080}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: idle-1, namespace: demo, labels: {kubernetes.io/service-name: idle}}
        addressType: IPv4
        endpoints:
        - addresses: [10.244.2.2]
          conditions: {ready: false}
        ports: [{port: 8080}]
        """).Cast<IKubernetesObject>());

    private static readonly LocalPod Source = new("demo", "a1", "client", "/proc/self/ns/net", 1, IPAddress.Parse("10.244.1.2"), null, FailOpen: false);

    private static readonly SelfTarget Guard = new(new ProxyOptions(), [IPAddress.Parse("10.0.0.1")]);

    // This node's enrolled pods: the source and its neighbour.
    private static readonly Dictionary<IPAddress, string> LocalPods = new()
    {
        [IPAddress.Parse("10.244.1.2")] = "demo/a1",
        [IPAddress.Parse("10.244.1.3")] = "demo/a2",
    };

    private static RoutePlan Decide(string destination, string? trustDomain = TrustDomain, InventorySnapshot? snapshot = null) =>
        RouteDecision.Decide(snapshot ?? Snapshot(), Source, IPEndPoint.Parse(destination), Guard, trustDomain, LocalPods);

    public static TheoryData<string, string, string?, string?> Plaintext() => new()
    {
        // destination, why, recorded destination workload, service
        { "10.244.2.9:8080", "an unmeshed pod", "plain/outside", null },
        // a host-network pod in a meshed namespace: its address is its node's, which names no workload
        { "10.0.0.2:8080", "a host-network pod", null, null },
        { "192.0.2.10:443", "outside the cluster", null, null },
    };

    [Theory]
    [MemberData(nameof(Plaintext))]
    public void DestinationOutsideTheMesh_GoesPlaintext(string destination, string why, string? workload, string? service)
    {
        var plan = Decide(destination);

        Assert.True(plan is PlaintextPlan, $"{why}: {plan}");
        Assert.Equal(IPEndPoint.Parse(destination), plan.Destination);
        Assert.Equal(workload, plan.Target is { } t ? $"{t.Namespace}/{t.Name}" : null);
        Assert.Equal(service, plan.DestinationService);
    }

    [Fact]
    public void MeshedPodOnAnotherNode_IsTunnelled_ToItsSpiffeIdAtItsAddress()
    {
        var plan = Assert.IsType<TunnelPlan>(Decide("10.244.2.2:8080"));

        Assert.Equal("spiffe://cluster.local/ns/demo/sa/client", plan.SourceId.ToString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/server", plan.DestinationId.ToString());
        Assert.Equal(IPAddress.Parse("10.244.2.2"), plan.Address);
        Assert.Equal("10.244.2.2:8080", plan.Authority);
    }

    [Fact]
    public void MeshedPodOnThisNode_IsDeliveredInProcess_ToThatPod()
    {
        var plan = Assert.IsType<DeliverLocalPlan<string>>(Decide("10.244.1.3:8080"));

        Assert.Equal("demo/a2", plan.Pod);
        Assert.Equal(IPEndPoint.Parse("10.244.1.3:8080"), plan.Destination);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/client", plan.SourceId.ToString());
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/neighbour", plan.DestinationId.ToString());
    }

    [Theory]
    [InlineData("10.244.2.2:8080")]
    [InlineData("10.244.1.3:8080")]
    public void WithoutACa_MeshedPodsGoPlaintext(string destination)
    {
        var plan = Decide(destination, trustDomain: null);

        Assert.IsType<PlaintextPlan>(plan);
        Assert.Equal(IPEndPoint.Parse(destination), plan.Destination);
    }

    [Fact]
    public void ServiceVip_GoesToItsReadyEndpoints_InTurn_AndNamesTheService()
    {
        var snapshot = Snapshot();
        var plans = Enumerable.Range(0, 4).Select(_ => Assert.IsType<TunnelPlan>(Decide("10.96.0.10:80", snapshot: snapshot))).ToList();

        Assert.All(plans, p => Assert.Equal("demo/server", p.DestinationService));
        Assert.All(plans, p => Assert.Equal(8080, p.Destination!.Port));
        var addresses = plans.Select(p => p.Destination!.Address.ToString()).ToList();
        Assert.Equal(["10.244.2.2", "10.244.2.3"], addresses.Distinct().Order());
        Assert.NotEqual(addresses[0], addresses[1]);
        Assert.Equal(addresses[0], addresses[2]);
        Assert.Equal(["demo/b1", "demo/b2"], plans.Select(p => p.Target!.Name).Distinct().Order().Select(n => $"demo/{n}"));
    }

    [Fact]
    public void ServiceWithNoReadyEndpoint_IsRefusedUH_NamingTheService()
    {
        var plan = Assert.IsType<DenyPlan>(Decide("10.96.0.11:80"));

        Assert.Equal(ProxyErrorKind.NoHealthyUpstream, plan.Error.Kind);
        Assert.Equal("UH", plan.Error.Flag);
        Assert.Equal("service has no ready endpoint", plan.Error.Reason);
        Assert.Equal("demo/idle", plan.DestinationService);
        Assert.Null(plan.Destination);
    }

    [Theory]
    [InlineData("10.244.2.2:15008")]
    [InlineData("10.244.1.3:15006")]
    [InlineData("127.0.0.1:15001")]
    [InlineData("10.0.0.1:15020")]
    public void AgentPort_IsRefusedLOOP_BeforeAnyTunnelOrDial(string destination)
    {
        var plan = Assert.IsType<DenyPlan>(Decide(destination));

        Assert.Equal("LOOP", plan.Error.Flag);
        Assert.Contains("never connects to itself", plan.Error.Reason);
        Assert.Equal(IPEndPoint.Parse(destination), plan.Destination);
    }

    [Fact]
    public void ServiceWhoseEndpointIsAnAgentPort_IsRefusedLOOP_AfterThePick()
    {
        var snapshot = InventoryBuilder.Build(KubernetesYaml.LoadAllFromString("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b1, namespace: demo}
            spec: {nodeName: node2}
            status: {podIP: 10.244.2.2, hostIP: 10.0.0.2}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: sneaky, namespace: demo}
            spec: {clusterIP: 10.96.0.12, ports: [{port: 80, targetPort: 15006}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: sneaky-1, namespace: demo, labels: {kubernetes.io/service-name: sneaky}}
            addressType: IPv4
            endpoints:
            - addresses: [10.244.2.2]
            ports: [{port: 15006}]
            """).Cast<IKubernetesObject>());

        var plan = Assert.IsType<DenyPlan>(Decide("10.96.0.12:80", snapshot: snapshot));

        Assert.Equal(ProxyErrorKind.Loop, plan.Error.Kind);
        Assert.Equal(IPEndPoint.Parse("10.244.2.2:15006"), plan.Destination);
        Assert.Equal("demo/sneaky", plan.DestinationService);
    }
}
