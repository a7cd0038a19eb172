using System.Net;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>The destinations the agent refuses because they are the agent itself (issue: self-connect loops).</summary>
public class SelfTargetTests
{
    private static readonly InventorySnapshot Snapshot = InventoryBuilder.Build(KubernetesYaml.LoadAllFromString("""
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
        metadata: {name: b1, namespace: demo}
        spec: {nodeName: node2}
        status: {podIP: 10.244.2.2, podIPs: [{ip: 10.244.2.2}, {ip: "fd00:2::2"}], hostIP: 10.0.0.2, hostIPs: [{ip: 10.0.0.2}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: outside, namespace: plain}
        spec: {nodeName: node3}
        status: {podIP: 10.244.3.2, hostIP: 10.0.0.3}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: agent, namespace: weft-system}
        spec: {nodeName: node4, hostNetwork: true}
        status: {podIP: 10.0.0.4}
        """).Cast<IKubernetesObject>());

    private static readonly SelfTarget Guard = new(new ProxyOptions(), [IPAddress.Parse("10.0.0.1")]);

    public static TheoryData<string> Refused() => new()
    {
        "10.244.2.2:15006", "10.244.2.2:15008", "10.244.2.2:15001", "10.244.2.2:15020", "10.244.2.2:15021", "10.244.2.2:15000",
        "[fd00:2::2]:15006", "[::ffff:10.244.2.2]:15008",
        "10.0.0.1:15020", "10.0.0.1:15021", "10.0.0.1:15008", // this node's interface
        "10.0.0.2:15020", "10.0.0.3:15021",                   // other nodes, from the pods' status.hostIPs
        "10.0.0.4:15020",                                     // a host-network pod's address is its node's
        "127.0.0.1:15006", "127.0.0.5:15001", "[::1]:15008", "0.0.0.0:15006",
    };

    public static TheoryData<string> Allowed() => new()
    {
        "10.244.2.2:8080",       // an app port of a meshed pod
        "10.244.3.2:15000",      // an unmeshed pod's own app may use the agent's port numbers
        "192.0.2.10:15008",      // outside the cluster: not an agent this mesh runs
        "127.0.0.1:8080",
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public void AgentPortOnPodNodeOrLoopbackAddress_IsRefused_WithAReasonNamingTheListener(string destination)
    {
        var reason = Guard.Check(IPEndPoint.Parse(destination), Snapshot);

        Assert.NotNull(reason);
        Assert.Contains("the agent's own", reason);
        Assert.Contains("never connects to itself", reason);
    }

    [Theory]
    [MemberData(nameof(Allowed))]
    public void OtherDestinations_AreNotTheAgent(string destination)
    {
        Assert.Null(Guard.Check(IPEndPoint.Parse(destination), Snapshot));
    }

    [Fact]
    public void ConfiguredPorts_AreTheAgentsPorts()
    {
        var guard = new SelfTarget(new ProxyOptions { InboundPort = 16006, HostPorts = [(9090, "metrics endpoint")] }, []);

        Assert.NotNull(guard.Check(IPEndPoint.Parse("10.244.2.2:16006"), Snapshot));
        Assert.NotNull(guard.Check(IPEndPoint.Parse("10.0.0.2:9090"), Snapshot));
        Assert.Null(guard.Check(IPEndPoint.Parse("10.244.2.2:15006"), Snapshot));
        Assert.Null(guard.Check(IPEndPoint.Parse("10.0.0.2:15020"), Snapshot));
        Assert.True(guard.IsAgentPort(15008, out var what) && what == "tunnel listener");
    }
}
