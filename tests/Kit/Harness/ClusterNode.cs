using System.Net;

namespace Weft.Harness;

/// <summary>
/// A node: a network namespace joined to the underlay bridge, forwarding for its pods, with a cgroup
/// whose subtree holds the node's agent ("agent") and its pods ("pods/NS-POD"). Capture attaches here.
/// </summary>
internal sealed class ClusterNode
{
    private readonly NetnsCluster _cluster;
    private readonly List<ClusterPod> _pods = [];

    internal ClusterNode(NetnsCluster cluster, int index, string name, string netnsName, string cgroupPath)
    {
        _cluster = cluster;
        Index = index;
        Name = name;
        NetnsName = netnsName;
        CgroupPath = cgroupPath;
        Address = IPAddress.Parse($"172.31.0.{index}");
        PodGateway = IPAddress.Parse($"10.244.{index}.1");
        Address6 = IPAddress.Parse($"fd00:31::{index:x}");
        PodGateway6 = IPAddress.Parse($"fd00:244:{index:x}::1");
    }

    public string Name { get; }

    /// <summary>1-based position in the cluster; the node's underlay address and pod CIDR derive from it.</summary>
    public int Index { get; }

    public string NetnsName { get; }

    public string NetnsPath => NetnsCluster.NetnsDirectory + "/" + NetnsName;

    /// <summary>The node's address on the underlay bridge (172.31.0.INDEX/24); other nodes route this node's pod CIDR via it.</summary>
    public IPAddress Address { get; }

    public string PodCidr => $"10.244.{Index}.0/24";

    /// <summary>The node's IPv6 underlay address (fd00:31::INDEX/64, unique-local, only inside the run's namespaces).</summary>
    public IPAddress Address6 { get; }

    /// <summary>The node's IPv6 pod CIDR (fd00:244:INDEX::/64): every pod is dual-stack.</summary>
    public string PodCidr6 => $"fd00:244:{Index:x}::/64";

    /// <summary>The node-side IPv6 address every pod uses as its default gateway.</summary>
    public IPAddress PodGateway6 { get; }

    /// <summary>The node-side address every pod uses as its default gateway.</summary>
    public IPAddress PodGateway { get; }

    /// <summary>The node's cgroup: eBPF attached here sees every pod and agent process of the node.</summary>
    public string CgroupPath { get; }

    /// <summary>Where processes started with <see cref="StartProcess(string, string[])"/> run (a child of <see cref="CgroupPath"/>).</summary>
    public string AgentCgroupPath => Path.Join(CgroupPath, "agent");

    public IReadOnlyList<ClusterPod> Pods
    {
        get
        {
            lock (_pods)
            {
                return _pods.ToArray();
            }
        }
    }

    /// <summary>Starts a process in the node's netns and the node's agent cgroup (e.g. the Weft agent).</summary>
    public ManagedProcess StartProcess(string file, params string[] args) => StartProcess(file, args, null);

    public ManagedProcess StartProcess(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment) =>
        _cluster.Start(AgentCgroupPath, NetnsPath, $"{file} on {Name}", file, args, environment);

    /// <summary>Starts this build of `weft` here, e.g. <c>StartWeft("app", "serve", "--port", "8080")</c>.</summary>
    public ManagedProcess StartWeft(params string[] args)
    {
        var (file, arguments) = WeftExecutable.Command(args);
        return _cluster.Start(AgentCgroupPath, NetnsPath, $"weft {string.Join(' ', args.Take(2))} on {Name}", file, arguments, null);
    }

    public override string ToString() => $"{Name} ({Address}, pods {PodCidr})";

    internal void Add(ClusterPod pod)
    {
        lock (_pods)
        {
            _pods.Add(pod);
        }
    }
}
