using System.Net;
using k8s;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>Whether a connection for a pod may reach its app (InboundDecision), decided from the inventory alone.</summary>
public class InboundDecisionTests
{
    private static InventorySnapshot Snapshot(string policies = "") => InventoryBuilder.Build(InventoryYaml.Load($"""
        apiVersion: v1
        kind: Namespace
        metadata: {"{"}name: demo, labels: {"{"}weft.dev/mesh: enabled{"}"}{"}"}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {"{"}name: b1, namespace: demo, labels: {"{"}app: b{"}"}{"}"}
        spec: {"{"}nodeName: node2, serviceAccountName: server{"}"}
        status: {"{"}podIP: 10.244.2.2, hostIP: 10.0.0.2{"}"}
        {policies}
        """, "inventory.yaml"));

    private const string Strict = """
        ---
        apiVersion: weft.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {name: default, namespace: demo}
        spec: {mtls: {mode: STRICT}}
        """;

    private const string DenyX = """
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: deny-x, namespace: demo}
        spec:
          selector: {matchLabels: {app: b}}
          action: DENY
          rules:
          - from: [{source: {principals: ["cluster.local/ns/other/sa/x"]}}]
        """;

    private static readonly LocalPod Pod = new("demo", "b1", "server", "/proc/self/ns/net", 1, IPAddress.Parse("10.244.2.2"), null, FailOpen: false);

    private static readonly SelfTarget Guard = new(new ProxyOptions(), []);

    private static readonly IPEndPoint Client = IPEndPoint.Parse("10.244.1.2:40000");

    private static readonly SpiffeId Allowed = new("cluster.local", "demo", "client");

    private static readonly SpiffeId Denied = new("cluster.local", "other", "x");

    private static ProxyError? Plaintext(string policies, string original) =>
        InboundDecision.Plaintext(Snapshot(policies), Pod, Client, IPEndPoint.Parse(original), Guard);

    private static ProxyError? Connect(string policies, string authority, SpiffeId peer) =>
        InboundDecision.Connect(Snapshot(policies), Pod, authority, IPEndPoint.TryParse(authority, out var target) ? target : null,
            peer, Client.Address, Guard);

    [Fact]
    public void Plaintext_ToAnAppPort_IsAdmitted_WhenPermissive()
    {
        Assert.Null(Plaintext("", "10.244.2.2:8080"));
    }

    [Fact]
    public void Plaintext_IsRefusedDENY_WhenStrict()
    {
        var refused = Plaintext(Strict, "10.244.2.2:8080");

        Assert.Equal("DENY", refused?.Flag);
        Assert.Equal("plaintext refused: mTLS mode is STRICT", refused?.Reason);
    }

    [Theory]
    [InlineData("10.244.2.2:15006")]
    [InlineData("10.244.2.2:15001")]
    [InlineData("10.244.2.2:15020")]
    public void Plaintext_ToAnAgentPort_IsRefusedLOOP_EvenBeforeStrict(string original)
    {
        var refused = Plaintext(Strict, original);

        Assert.Equal("LOOP", refused?.Flag);
        Assert.Contains("never connects to itself", refused?.Reason);
    }

    [Fact]
    public void Plaintext_ForAPodGoneFromTheInventory_IsRefusedDENY()
    {
        var gone = Pod with { Ipv4 = IPAddress.Parse("10.244.2.99") };

        var refused = InboundDecision.Plaintext(Snapshot(), gone, Client, IPEndPoint.Parse("10.244.2.99:8080"), Guard);

        Assert.Equal("DENY", refused?.Flag);
        Assert.Equal("demo/b1 is no longer in the inventory", refused?.Reason);
    }

    [Fact]
    public void Connect_ToThisPodsAppPort_IsAdmitted_EvenWhenStrict()
    {
        Assert.Null(Connect(Strict, "10.244.2.2:8080", Allowed));
    }

    [Theory]
    [InlineData("10.244.2.3:8080")]
    [InlineData("10.244.2.2:0")]
    [InlineData("b.demo.svc:8080")]
    public void Connect_NotNamingThisPod_IsRefusedCONNECT(string authority)
    {
        var refused = Connect("", authority, Allowed);

        Assert.Equal("CONNECT", refused?.Flag);
        Assert.Equal($"CONNECT {authority} does not name this pod (demo/b1)", refused?.Reason);
    }

    [Fact]
    public void Connect_ToAnAgentPort_IsRefusedLOOP()
    {
        Assert.Equal("LOOP", Connect("", "10.244.2.2:15008", Allowed)?.Flag);
    }

    [Fact]
    public void Connect_FromAPeerThePolicyDenies_IsRefusedDENY_AndOthersAreNot()
    {
        var refused = Connect(DenyX, "10.244.2.2:8080", Denied);

        Assert.Equal(ProxyErrorKind.Denied, refused?.Kind);
        Assert.Contains("deny-x", refused?.Reason);
        Assert.Null(Connect(DenyX, "10.244.2.2:8080", Allowed));
    }
}
