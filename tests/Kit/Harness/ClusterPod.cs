using System.Net;

namespace Weft.Harness;

/// <summary>
/// A pod: its own network namespace with one veth (eth0) to its node, an address from the node's pod
/// CIDR and a cgroup under the node's. Processes started here are in both from their first instruction.
/// </summary>
internal sealed class ClusterPod
{
    private readonly NetnsCluster _cluster;

    internal ClusterPod(NetnsCluster cluster, ClusterNode node, PodSpec spec, int hostIndex, string netnsName, string cgroupPath)
    {
        _cluster = cluster;
        Node = node;
        Spec = spec;
        Name = spec.Name;
        Namespace = spec.Namespace;
        NetnsName = netnsName;
        CgroupPath = cgroupPath;
        Address = IPAddress.Parse($"10.244.{node.Index}.{hostIndex}");
        Address6 = IPAddress.Parse($"fd00:244:{node.Index:x}::{hostIndex:x}");
        NodeInterface = $"pod{hostIndex}";
    }

    public string Name { get; }

    public string Namespace { get; }

    public ClusterNode Node { get; }

    public PodSpec Spec { get; }

    public string ServiceAccount => Spec.ServiceAccount ?? Spec.App;

    public IReadOnlyDictionary<string, string> Labels => Spec.Labels ?? new Dictionary<string, string> { ["app"] = Spec.App };

    public string NetnsName { get; }

    /// <summary>/var/run/netns/NAME: what the inventory's weft.dev/netns annotation holds.</summary>
    public string NetnsPath => NetnsCluster.NetnsDirectory + "/" + NetnsName;

    public IPAddress Address { get; }

    /// <summary>The pod's IPv6 address (fd00:244:NODE::HOST): pods are dual-stack, IPv4 first as in Kubernetes' podIPs.</summary>
    public IPAddress Address6 { get; }

    /// <summary>The pod's cgroup, below its node's cgroup.</summary>
    public string CgroupPath { get; }

    /// <summary>The node-side end of the pod's veth, in the node's netns.</summary>
    public string NodeInterface { get; }

    /// <summary>Starts a process in this pod's netns and cgroup (it is moved before it runs any code of its own).</summary>
    public ManagedProcess StartProcess(string file, params string[] args) => StartProcess(file, args, null);

    public ManagedProcess StartProcess(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment) =>
        _cluster.Start(CgroupPath, NetnsPath, $"{file} in {Namespace}/{Name}", file, args, environment);

    /// <summary>Starts this build of `weft` here, e.g. <c>StartWeft("app", "serve", "--port", "8080")</c>.</summary>
    public ManagedProcess StartWeft(params string[] args)
    {
        var (file, arguments) = WeftExecutable.Command(args);
        return _cluster.Start(CgroupPath, NetnsPath, $"weft {string.Join(' ', args.Take(2))} in {Namespace}/{Name}", file, arguments, null);
    }

    public override string ToString() => $"{Namespace}/{Name} ({Address} {Address6} on {Node.Name})";
}
