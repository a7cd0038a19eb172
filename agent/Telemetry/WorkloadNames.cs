using Weft.Inventory;

namespace Weft.Telemetry;

/// <summary>
/// What Istio's metric labels call a workload, derived from a pod: the Deployment or StatefulSet
/// name when the pod's labels show it has one, else the pod's own name. Pods come and go; the
/// workload name stays, which keeps label cardinality at workloads, not pods.
/// </summary>
internal readonly record struct WorkloadIdentity(string Workload, string Namespace, string App, string CanonicalService)
{
    public static readonly WorkloadIdentity Unknown = new("unknown", "unknown", "unknown", "unknown");
}

internal static class WorkloadNames
{
    /// <summary>The workload a pod belongs to; <paramref name="labels"/> may be empty when the pod is gone from the inventory.</summary>
    public static string WorkloadName(string podName, IReadOnlyDictionary<string, string> labels)
    {
        // Deployment pods are named <deployment>-<pod-template-hash>-<5 random chars>.
        if (labels.TryGetValue("pod-template-hash", out var hash) && hash.Length > 0)
        {
            var marker = "-" + hash + "-";
            var at = podName.LastIndexOf(marker, StringComparison.Ordinal);
            if (at > 0)
            {
                return podName[..at];
            }
        }

        // StatefulSet pods are named <statefulset>-<ordinal>.
        if (labels.ContainsKey("statefulset.kubernetes.io/pod-name"))
        {
            var dash = podName.LastIndexOf('-');
            if (dash > 0 && podName.AsSpan(dash + 1).IndexOfAnyExceptInRange('0', '9') < 0)
            {
                return podName[..dash];
            }
        }

        return podName;
    }

    /// <summary>Istio's canonical service: the canonical-name label, app.kubernetes.io/name, app, else the workload name.</summary>
    public static string CanonicalService(string workload, IReadOnlyDictionary<string, string> labels) =>
        labels.TryGetValue("service.istio.io/canonical-name", out var name) ? name
        : labels.TryGetValue("app.kubernetes.io/name", out name) ? name
        : labels.TryGetValue("app", out name) ? name
        : workload;

    public static WorkloadIdentity Of(Workload pod)
    {
        var workload = WorkloadName(pod.Name, pod.Labels);
        var app = pod.Labels.TryGetValue("app", out var a) ? a : pod.Labels.TryGetValue("app.kubernetes.io/name", out a) ? a : "unknown";
        return new WorkloadIdentity(workload, pod.Namespace, app, CanonicalService(workload, pod.Labels));
    }
}

/// <summary>
/// "namespace/pod" (as flow records hold it) to workload identity, for one inventory snapshot.
/// Built once per snapshot version, read without locks.
/// </summary>
internal sealed class WorkloadDirectory
{
    private static readonly IReadOnlyDictionary<string, string> NoLabels = new Dictionary<string, string>();
    private readonly Dictionary<string, WorkloadIdentity> _byPod;
    private readonly HashSet<(string Workload, string Namespace)> _workloads;

    private WorkloadDirectory(long version, Dictionary<string, WorkloadIdentity> byPod)
    {
        Version = version;
        _byPod = byPod;
        _workloads = byPod.Values.Select(w => (w.Workload, w.Namespace)).ToHashSet();
    }

    public static WorkloadDirectory Empty { get; } = new(-1, new Dictionary<string, WorkloadIdentity>());

    public long Version { get; }

    public static WorkloadDirectory Build(InventorySnapshot snapshot)
    {
        var byPod = new Dictionary<string, WorkloadIdentity>(StringComparer.Ordinal);
        foreach (var pod in snapshot.Workloads)
        {
            byPod[$"{pod.Namespace}/{pod.Name}"] = WorkloadNames.Of(pod);
        }

        return new WorkloadDirectory(snapshot.Version, byPod);
    }

    /// <summary>True when a pod of this workload is in the snapshot; "unknown" (a peer outside the inventory) always is.</summary>
    public bool Has(string workload, string ns) =>
        (workload == WorkloadIdentity.Unknown.Workload && ns == WorkloadIdentity.Unknown.Namespace) || _workloads.Contains((workload, ns));

    public WorkloadIdentity Resolve(string? podKey)
    {
        if (podKey is null)
        {
            return WorkloadIdentity.Unknown;
        }

        if (_byPod.TryGetValue(podKey, out var identity))
        {
            return identity;
        }

        // A pod that left the inventory while its connection was open: its own name is the best we know.
        var slash = podKey.IndexOf('/');
        var ns = slash > 0 ? podKey[..slash] : "unknown";
        var name = WorkloadNames.WorkloadName(podKey[(slash + 1)..], NoLabels);
        return new WorkloadIdentity(name, ns, "unknown", name);
    }
}
