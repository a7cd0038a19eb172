using k8s;
using k8s.Models;
using Weft.Harness;

namespace Weft.Tests.Harness;

/// <summary>One 2-node x 2-pod cluster shared by the read-only tests of this class.</summary>
public sealed class TwoNodeCluster : IAsyncLifetime
{
    internal NetnsCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        if (Privileged.SkipReason is not null)
        {
            return; // every test of the class is skipped: build nothing
        }

        Cluster = await NetnsCluster.CreateAsync(new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "c1")),
            new NodeSpec("node2", new PodSpec("demo", "b1"), new PodSpec("other", "d1"))));
    }

    public async Task DisposeAsync()
    {
        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
    }
}

[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
public sealed class NetnsClusterTests(TwoNodeCluster fixture) : IClassFixture<TwoNodeCluster>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private NetnsCluster Cluster => fixture.Cluster;

    [PrivilegedFact]
    public async Task PodOnOneNode_ReachesPodOnOtherNode_WithItsOwnSourceAddress()
    {
        var a1 = Cluster.Pod("demo", "a1");
        var b1 = Cluster.Pod("demo", "b1");
        await using var server = await PeerScripts.StartServerAsync(b1, 8080);

        var reply = await PeerScripts.ExchangeAsync(a1, b1.Address.ToString(), 8080, "hello");

        Assert.StartsWith($"from {a1.Address}:", reply);
        Assert.EndsWith("got hello", reply);
    }

    [PrivilegedFact]
    public async Task PodsOnTheSameNode_ReachEachOther()
    {
        var a1 = Cluster.Pod("demo", "a1");
        var c1 = Cluster.Pod("demo", "c1");
        await using var server = await PeerScripts.StartServerAsync(c1, 9090);

        var reply = await PeerScripts.ExchangeAsync(a1, c1.Address.ToString(), 9090, "same node");

        Assert.Equal($"from {a1.Address}:", reply[..$"from {a1.Address}:".Length]);
        Assert.EndsWith("got same node", reply);
    }

    [PrivilegedFact]
    public async Task Node_ReachesPodOnOtherNode_AndPodReachesItsNode()
    {
        var node1 = Cluster.Node("node1");
        var d1 = Cluster.Pod("other", "d1");
        await using var podServer = await PeerScripts.StartServerAsync(d1, 7070);
        await using var nodeServer = await PeerScripts.StartServerAsync(node1, 7071);

        var fromNode = await PeerScripts.ExchangeAsync(node1, d1.Address.ToString(), 7070, "x");
        var fromPod = await PeerScripts.ExchangeAsync(d1, node1.Address.ToString(), 7071, "y");

        Assert.StartsWith($"from {node1.Address}:", fromNode);
        Assert.StartsWith($"from {d1.Address}:", fromPod);
    }

    [PrivilegedFact]
    public async Task ServiceVip_IsNotRoutedAnywhere()
    {
        var a1 = Cluster.Pod("demo", "a1");

        await using var probe = a1.StartProcess("/usr/bin/python3", "-c", PeerScripts.ConnectProbe, "10.96.0.10", "80");
        await probe.WaitForExitAsync(Timeout);

        // the node has no route for 10.96/16, so only an agent's capture can give these addresses meaning
        Assert.Contains(probe.StdoutLines, l => l.StartsWith("error", StringComparison.Ordinal));
    }

    [PrivilegedFact]
    public async Task ProcessInPod_IsInThePodCgroup_FromItsFirstInstruction()
    {
        var a1 = Cluster.Pod("demo", "a1");

        await using var cat = a1.StartProcess("/bin/cat", "/proc/self/cgroup");
        Assert.Equal(0, await cat.WaitForExitAsync(Timeout));

        var expected = "0::/" + Path.GetRelativePath(Cgroup2.FindMount(), a1.CgroupPath);
        Assert.Contains(expected, cat.StdoutLines);
        Assert.Equal(Path.Join(Cluster.CgroupRoot, "node1", "pods", "demo-a1"), a1.CgroupPath);
        Assert.StartsWith(a1.Node.CgroupPath + "/", a1.CgroupPath);
    }

    [PrivilegedFact]
    public async Task ProcessInPod_SeesOnlyThePodNetwork()
    {
        var b1 = Cluster.Pod("demo", "b1");

        await using var ip = b1.StartProcess("ip", "-o", "-4", "addr", "show");
        await ip.WaitForExitAsync(Timeout);

        Assert.Contains(ip.StdoutLines, l => l.Contains($"eth0    inet {b1.Address}/32", StringComparison.Ordinal));
        Assert.Equal(2, ip.StdoutLines.Count); // lo and eth0
    }

    [PrivilegedFact]
    public async Task ProcessOnNode_IsInAgentCgroup_AndSeesTheCgroupMount()
    {
        var node2 = Cluster.Node("node2");

        await using var sleep = node2.StartProcess("sleep", "60");
        await using var ls = node2.StartProcess("ls", Path.Join(node2.CgroupPath, "pods"));
        await ls.WaitForExitAsync(Timeout);

        Assert.Equal(node2.AgentCgroupPath, Cgroup2.PathOf(sleep.Pid));
        // agents attach eBPF to node cgroups: the mount must stay visible (ip netns exec would hide /sys)
        Assert.Contains("demo-b1", ls.StdoutLines);
        Assert.Contains("other-d1", ls.StdoutLines);
    }

    [PrivilegedFact]
    public void Names_CarryTheRunId_AndFitInterfaceLimits()
    {
        Assert.Matches("^[0-9a-f]{6}$", Cluster.RunId);
        Assert.Equal("weft-" + Cluster.RunId, Path.GetFileName(Cluster.CgroupRoot));
        Assert.All(Cluster.Pods, p => Assert.StartsWith("weft" + Cluster.RunId + "-", p.NetnsName));
        Assert.All(Cluster.Pods, p => Assert.True(File.Exists(p.NetnsPath)));
        Assert.All(Cluster.Pods, p => Assert.InRange(p.NodeInterface.Length, 1, 15));
        Assert.Equal("10.244.2.0/24", Cluster.Node("node2").PodCidr);
    }

    [PrivilegedFact]
    public void InventoryYaml_ReadsBackAsKubernetesObjects_WithoutOmittedPods()
    {
        var b1 = Cluster.Pod("demo", "b1");
        var d1 = Cluster.Pod("other", "d1");

        var yaml = Cluster.InventoryYaml(new InventoryOptions
        {
            Services = [new ServiceSpec("b", "demo", "10.96.0.10", 80, 8080, b1)],
            Omit = [d1],
        });
        var objects = KubernetesYaml.LoadAllFromString(yaml);

        var ns = Assert.Single(objects.OfType<V1Namespace>());
        Assert.Equal("demo", ns.Metadata.Name);
        Assert.Equal("enabled", ns.Metadata.Labels["weft.dev/mesh"]);
        var pods = objects.OfType<V1Pod>().ToList();
        Assert.Equal(["a1", "b1", "c1"], pods.Select(p => p.Metadata.Name).Order());
        var pod = pods.Single(p => p.Metadata.Name == "b1");
        Assert.Equal(b1.NetnsPath, pod.Metadata.Annotations["weft.dev/netns"]);
        Assert.Equal("node2", pod.Spec.NodeName);
        Assert.Equal("b", pod.Spec.ServiceAccountName);
        Assert.Equal("b", pod.Metadata.Labels["app"]);
        Assert.Equal(b1.Address.ToString(), pod.Status.PodIP);
        var service = Assert.Single(objects.OfType<V1Service>());
        Assert.Equal("10.96.0.10", service.Spec.ClusterIP);
        Assert.Equal(80, service.Spec.Ports[0].Port);
        Assert.Equal("8080", service.Spec.Ports[0].TargetPort.Value);
        var slice = Assert.Single(objects.OfType<V1EndpointSlice>());
        Assert.Equal("b", slice.Metadata.Labels["kubernetes.io/service-name"]);
        Assert.Equal(8080, slice.Ports[0].Port);
        var endpoint = Assert.Single(slice.Endpoints);
        Assert.Equal([b1.Address.ToString()], endpoint.Addresses);
        Assert.Equal("node2", endpoint.NodeName);
        Assert.Equal("b1", endpoint.TargetRef.Name);
    }
}
