using Weft.Capture;
using Weft.Inventory;

namespace Weft.Node;

/// <summary>
/// Finds the network namespace of a workload that runs on this node. That is node-local knowledge, not the cluster's,
/// so it lives here rather than in the inventory:
/// <code>
///   standalone inventory ── the file's weft.dev/netns annotation (the file's author owns the node)
///   Kubernetes           ── the pod's cgroup (pod UID, QoS class) ─► a live pid in it ─► /proc/PID/ns/net
/// </code>
/// In Kubernetes mode the annotation is never read, even should a snapshot carry it: anyone who may edit a pod
/// could point it at another pod's namespace. Used only under the node agent's reconcile gate.
/// </summary>
internal sealed class LocalNetns
{
    private readonly PodNetns? _cgroups;
    private Dictionary<string, int> _pids = new(StringComparer.Ordinal);
    private Dictionary<string, int> _seen = new(StringComparer.Ordinal);

    private LocalNetns(PodNetns? cgroups) => _cgroups = cgroups;

    /// <summary>Standalone inventories: the namespace the file names.</summary>
    public static LocalNetns FromInventoryFile() => new(null);

    /// <summary>Kubernetes: from each pod's cgroup under <paramref name="podCgroupRoot"/> (null: the cgroup v2 mount).</summary>
    public static LocalNetns FromCgroups(string? podCgroupRoot, string procRoot = "/proc") => new(new PodNetns(podCgroupRoot, procRoot));

    /// <summary>
    /// The workload's namespace path, or null when it has none (yet): a pod whose cgroup or first process is not there.
    /// The pid that named a pod last time is kept while it lives, so the path does not change under an enrolled pod.
    /// </summary>
    public string? Find(Workload workload)
    {
        ArgumentNullException.ThrowIfNull(workload);
        if (_cgroups is null)
        {
            return workload.NetnsPath;
        }

        if (workload.Uid is not { } uid || workload.Phase is "Succeeded" or "Failed")
        {
            return null;
        }

        var preferred = _pids.TryGetValue(uid, out var pid) ? pid : (int?)null;
        if (_cgroups.Find(uid, PodNetns.ParseQosClass(workload.QosClass), preferred) is not { } found)
        {
            return null;
        }

        _seen[uid] = found.Pid;
        return found.NetnsPath;
    }

    /// <summary>Ends one reconcile: pods not looked up since the last call are forgotten.</summary>
    public void Sweep()
    {
        _pids = _seen;
        _seen = new Dictionary<string, int>(StringComparer.Ordinal);
    }
}
