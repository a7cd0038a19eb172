using System.Collections.Immutable;
using System.Net;
using Weft.Capture;
using Weft.Inventory;
using Weft.Node;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// The node side of pod network namespace discovery, on fake cgroup and /proc trees laid out like kubelet's: in
/// Kubernetes mode a local pod's namespace comes from its cgroup and never from a weft.dev/netns annotation; a
/// standalone inventory's annotation is used as written.
/// </summary>
public sealed class LocalNetnsTests : IDisposable
{
    private const string Uid = "5d1e7a2b-0c3f-4b8a-9e6d-abcdef012345";
    private readonly string _root = Directory.CreateTempSubdirectory("weft-localnetns-").FullName;

    private string Cgroup => Path.Join(_root, "cgroup");

    private string Proc => Path.Join(_root, "proc");

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void KubernetesMode_TakesTheNetnsFromThePodsCgroup_NeverFromTheAnnotation()
    {
        MakePod(PodQosClass.Burstable, 4242);
        MakeProcess(1); // the namespace the annotation points at exists too
        var netns = LocalNetns.FromCgroups(Cgroup, Proc);

        var found = netns.Find(Workload(netnsAnnotation: "/proc/1/ns/net"));

        Assert.Equal(Path.Join(Proc, "4242", "ns", "net"), found);
    }

    [Fact]
    public void KubernetesMode_PodWithoutACgroupYet_HasNoNetns_UntilItsCgroupAppears()
    {
        var netns = LocalNetns.FromCgroups(Cgroup, Proc);
        Assert.Null(netns.Find(Workload(netnsAnnotation: "/proc/1/ns/net")));
        netns.Sweep();

        MakePod(PodQosClass.Burstable, 777);

        Assert.Equal(Path.Join(Proc, "777", "ns", "net"), netns.Find(Workload()));
    }

    [Fact]
    public void KubernetesMode_FinishedPodOrPodWithoutUid_HasNoNetns()
    {
        MakePod(PodQosClass.Burstable, 4242);
        var netns = LocalNetns.FromCgroups(Cgroup, Proc);

        Assert.Null(netns.Find(Workload() with { Phase = "Succeeded" }));
        Assert.Null(netns.Find(Workload() with { Phase = "Failed" }));
        Assert.Null(netns.Find(Workload() with { Uid = null }));
        Assert.NotNull(netns.Find(Workload()));
    }

    [Fact]
    public void KubernetesMode_KeepsThePidThatNamedThePod_WhileItLives()
    {
        // The app (pid 900) sorts before the sandbox (pid 1000) only after the sandbox was seen first: the path must
        // not move under an enrolled pod just because another process of the pod has a lower pid.
        var pod = MakePod(PodQosClass.Burstable, 1000);
        var netns = LocalNetns.FromCgroups(Cgroup, Proc);
        Assert.Equal(Path.Join(Proc, "1000", "ns", "net"), netns.Find(Workload()));
        netns.Sweep();

        MakeContainer(pod, "app", 900);

        Assert.Equal(Path.Join(Proc, "1000", "ns", "net"), netns.Find(Workload()));
    }

    [Fact]
    public void StandaloneMode_UsesTheInventoryFilesAnnotation()
    {
        MakePod(PodQosClass.Burstable, 4242);
        var netns = LocalNetns.FromInventoryFile();

        Assert.Equal("/var/run/netns/weft-a1", netns.Find(Workload(netnsAnnotation: "/var/run/netns/weft-a1")));
        Assert.Null(netns.Find(Workload()));
    }

    private static Workload Workload(string? netnsAnnotation = null) => new()
    {
        Name = "a1",
        Namespace = "demo",
        ServiceAccount = "a",
        NodeName = "node1",
        Addresses = ImmutableArray.Create(IPAddress.Parse("10.244.1.2")),
        Labels = new Dictionary<string, string>(),
        NetnsPath = netnsAnnotation,
        Uid = Uid,
        QosClass = "Burstable",
        Phase = "Running",
        Enrolled = true,
    };

    private string MakePod(PodQosClass qos, int sandboxPid)
    {
        var pod = Path.Join(Cgroup, PodNetns.RelativePath(CgroupDriver.Systemd, qos, Uid));
        MakeContainer(pod, "cri-containerd-sandbox.scope", sandboxPid);
        return pod;
    }

    private void MakeContainer(string pod, string name, int pid)
    {
        var directory = Path.Join(pod, name);
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Join(directory, "cgroup.procs"), $"{pid}\n");
        MakeProcess(pid);
    }

    private void MakeProcess(int pid)
    {
        var ns = Path.Join(Proc, pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "ns");
        Directory.CreateDirectory(ns);
        File.WriteAllText(Path.Join(ns, "net"), "");
    }
}
