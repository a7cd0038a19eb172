using System.Collections.Concurrent;
using k8s;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Ca;

/// <summary>What the CA keeps of one pod: enough to find a caller's node and to say which identities a node runs.</summary>
internal sealed record PodPlacement(string Namespace, string Name, string Uid, string ServiceAccount, string? Node, string? Phase)
{
    /// <summary>Scheduled on a node and not finished: a pod that may need (or, as a caller, use) an identity.</summary>
    public bool OnNode => Node is { Length: > 0 } && Phase is not ("Succeeded" or "Failed");
}

/// <summary>
/// Kubernetes mode's pod index, kept by a list+watch of every pod (<see cref="KubernetesResourceWatch{T, TList}"/>,
/// the agent's inventory machinery: pages, bookmarks, 410 → relist, backoff) and changed one pod at a time:
/// <code>
///   pod watch ──ADDED/MODIFIED/DELETED, relist differences──► by uid: the pod ─┐
///                                                                            └─► count per (node, namespace, service account)
/// </code>
/// Readers (every CA request) look up without a lock; the watch's one writer changes both maps under a lock,
/// so a reader sees each pod's old or new placement, never a count that lost one.
/// </summary>
internal sealed class KubernetesPodIndex : IPodPlacements, IDisposable
{
    private readonly ConcurrentDictionary<string, PodPlacement> _byUid = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<(string Node, string Namespace, string ServiceAccount), int> _counts = new();
    private readonly object _writeGate = new();
    private readonly KubernetesResourceWatch<V1Pod, V1PodList> _watch;
    private readonly TaskCompletionSource _listed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly KubernetesWatchLoops _loops;
    private long _changes;

    private KubernetesPodIndex(IKubernetes client, KubernetesInventoryOptions options)
    {
        var (list, watch) = KubernetesCalls.Pods(client);
        _watch = new KubernetesResourceWatch<V1Pod, V1PodList>("pods", list, watch, Trim, OnChanged, options, Apply);
        _loops = new KubernetesWatchLoops(client, ownsClient: false);
    }

    /// <summary>Pods known now (every namespace, every node).</summary>
    public int Count => _byUid.Count;

    /// <summary>Changes applied so far (watch events and relist differences).</summary>
    public long Changes => Interlocked.Read(ref _changes);

    /// <summary>Starts listing and watching pods; <see cref="WaitForListAsync"/> completes after the first full list.</summary>
    public static KubernetesPodIndex Start(IKubernetes client, KubernetesInventoryOptions? options = null)
    {
        // The watch reads only the timeouts, page size and backoff of these options; the node name is the agent's concern.
        var index = new KubernetesPodIndex(client, options ?? new KubernetesInventoryOptions { NodeName = "" });
        index._loops.Start([index._watch]);
        return index;
    }

    public Task WaitForListAsync(CancellationToken cancellationToken = default) => _listed.Task.WaitAsync(cancellationToken);

    public bool HasPod(string node, string @namespace, string serviceAccount) =>
        _counts.TryGetValue((node, @namespace, serviceAccount), out var count) && count > 0;

    public string Describe() => $"pod watch at resourceVersion {_watch.ResourceVersion ?? "none"}, {Count} pods";

    /// <summary>The pod with this uid, or null when the watch has not seen it or saw it deleted.</summary>
    public PodPlacement? Pod(string uid) => _byUid.TryGetValue(uid, out var pod) ? pod : null;

    public void Dispose() => _loops.Dispose();

    private void OnChanged()
    {
        if (_watch.Listed && _listed.TrySetResult())
        {
            Log.Info("ca", $"pod index ready: {Count} pods");
        }
    }

    /// <summary>Called by the watch, in order, under its cache lock.</summary>
    private void Apply(InventoryChange change)
    {
        if (change.Listed is { } listed)
        {
            // A full list (first, or after 410 Gone or an outage): pods it does not name were deleted meanwhile.
            foreach (var uid in _byUid.Keys.Where(uid => !listed.Contains(uid)).ToList())
            {
                Apply(new InventoryChange(typeof(V1Pod), uid, null));
            }

            return;
        }

        var placement = change.Object is V1Pod pod ? PlacementOf(pod) : null;
        lock (_writeGate)
        {
            if (_byUid.TryGetValue(change.Id, out var old) && old.OnNode)
            {
                var key = (old.Node!, old.Namespace, old.ServiceAccount);
                if (_counts.AddOrUpdate(key, 0, (_, n) => n - 1) <= 0)
                {
                    _counts.TryRemove(new KeyValuePair<(string, string, string), int>(key, 0));
                }
            }

            if (placement is null)
            {
                _byUid.TryRemove(change.Id, out _);
            }
            else
            {
                _byUid[change.Id] = placement;
                if (placement.OnNode)
                {
                    _counts.AddOrUpdate((placement.Node!, placement.Namespace, placement.ServiceAccount), 1, (_, n) => n + 1);
                }
            }

            Interlocked.Increment(ref _changes);
        }
    }

    private static PodPlacement PlacementOf(V1Pod pod) => new(
        pod.Metadata.NamespaceProperty ?? "",
        pod.Metadata.Name ?? "",
        pod.Metadata.Uid ?? "",
        pod.Spec?.ServiceAccountName is { Length: > 0 } account ? account : "default",
        pod.Spec?.NodeName,
        pod.Status?.Phase);

    /// <summary>Only what the index reads is handed to it.</summary>
    private static V1Pod Trim(V1Pod pod) => new()
    {
        ApiVersion = "v1",
        Kind = "Pod",
        Metadata = new V1ObjectMeta
        {
            Name = pod.Metadata.Name,
            NamespaceProperty = pod.Metadata.NamespaceProperty,
            Uid = pod.Metadata.Uid,
            ResourceVersion = pod.Metadata.ResourceVersion,
        },
        Spec = pod.Spec is null ? null : new V1PodSpec { NodeName = pod.Spec.NodeName, ServiceAccountName = pod.Spec.ServiceAccountName },
        Status = pod.Status is null ? null : new V1PodStatus { Phase = pod.Status.Phase },
    };
}
