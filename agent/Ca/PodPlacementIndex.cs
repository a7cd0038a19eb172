using System.Collections.Frozen;
using Weft.Inventory;

namespace Weft.Ca;

/// <summary>
/// Which service accounts have a pod scheduled on which node: the set of (node, namespace, service account)
/// the CA authorizes against. Built once per inventory version and swapped whole, so a request reads one
/// consistent index without a lock. Pods that finished (phase Succeeded or Failed) no longer need an identity.
/// </summary>
internal sealed class PodPlacementIndex
{
    private readonly FrozenSet<(string Node, string Namespace, string ServiceAccount)> _placements;

    private PodPlacementIndex(FrozenSet<(string, string, string)> placements, long inventoryVersion)
    {
        _placements = placements;
        InventoryVersion = inventoryVersion;
    }

    /// <summary>The inventory version this index was built from.</summary>
    public long InventoryVersion { get; }

    public int Count => _placements.Count;

    public static PodPlacementIndex Build(InventorySnapshot snapshot)
    {
        var placements = new HashSet<(string, string, string)>();
        foreach (var workload in snapshot.Workloads)
        {
            if (workload.NodeName is { Length: > 0 } node && workload.Phase is not ("Succeeded" or "Failed"))
            {
                placements.Add((node, workload.Namespace, workload.ServiceAccount));
            }
        }
        return new PodPlacementIndex(placements.ToFrozenSet(), snapshot.Version);
    }

    /// <summary>True when at least one pod of <paramref name="namespace"/>/<paramref name="serviceAccount"/> is scheduled on <paramref name="node"/>.</summary>
    public bool HasPod(string node, string @namespace, string serviceAccount) =>
        _placements.Contains((node, @namespace, serviceAccount));
}

/// <summary>Keeps a <see cref="PodPlacementIndex"/> current with an <see cref="InventoryStore"/>: rebuilt on every publish.</summary>
internal sealed class PodPlacementTracker : IPodPlacements, IDisposable
{
    private readonly InventoryStore _store;
    private readonly object _rebuildGate = new();
    private PodPlacementIndex _current;

    public PodPlacementTracker(InventoryStore store)
    {
        _store = store;
        _current = PodPlacementIndex.Build(store.Current);
        store.Changed += OnChanged;
        // A publish between building and subscribing would otherwise be missed.
        OnChanged(store.Current);
    }

    public PodPlacementIndex Current => Volatile.Read(ref _current);

    public bool HasPod(string node, string @namespace, string serviceAccount) => Current.HasPod(node, @namespace, serviceAccount);

    public string Describe() => $"inventory version {Current.InventoryVersion}";

    public void Dispose() => _store.Changed -= OnChanged;

    private void OnChanged(InventorySnapshot snapshot)
    {
        lock (_rebuildGate)
        {
            // Handlers may run out of order; never replace a newer index with an older one.
            var latest = _store.Current;
            if (latest.Version <= Current.InventoryVersion)
            {
                return;
            }
            Volatile.Write(ref _current, PodPlacementIndex.Build(latest));
        }
    }
}
