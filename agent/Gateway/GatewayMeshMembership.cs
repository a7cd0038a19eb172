using System.Collections.Concurrent;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Gateway;

/// <summary>
/// Which backend pods are in the mesh, for the gateway in Kubernetes mode: the cluster's Namespaces and Pods
/// (trimmed as the agent trims them) applied one change at a time to the agent's own <see cref="InventoryState"/>,
/// so a pod is meshed exactly when the agents would enroll it (the <c>weft.dev/mesh</c> label of its namespace
/// or its own, not on the host network). <see cref="GatewayMesh.Decide"/> reads <see cref="Current"/>.
/// <code>
///   namespaces, pods (trimmed) ─► queue ─► debounce ─► InventoryState (the agent's enrollment rule) ─► Current
/// </code>
/// Services and EndpointSlices are not applied here: routes take them from the route compiler's own inventory.
/// </summary>
internal sealed class GatewayMeshMembership : IDisposable
{
    private readonly object _gate = new();
    private readonly ConcurrentQueue<InventoryChange> _changes = new();
    private readonly InventoryState _state = new(Weft.Policy.PolicyKinds.DefaultMeshRootNamespace);
    private readonly Timer _debounce;
    private readonly TimeSpan _delay;
    private InventorySnapshot _current = InventorySnapshot.Empty;
    private bool _disposed;

    public GatewayMeshMembership(TimeSpan debounce)
    {
        _delay = debounce;
        _debounce = new Timer(_ => Publish(), null, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The pods and namespaces as last published; read on each new backend connection, without a lock.</summary>
    public InventorySnapshot Current => Volatile.Read(ref _current);

    /// <summary>A pod only the gateway's pod watch keeps: the fields the enrollment rule reads, nothing else.</summary>
    public static V1Pod Trim(V1Pod pod) => KubernetesInventorySource.TrimPod(pod);

    /// <summary>Takes one change of a Namespace or Pod watch, in the order the watch saw them.</summary>
    public void Record(InventoryChange change)
    {
        if (change.Kind == typeof(V1Namespace) || change.Kind == typeof(V1Pod))
        {
            _changes.Enqueue(change);
        }
    }

    /// <summary>Schedules a publish after the debounce (a burst of pod events makes one snapshot).</summary>
    public void Changed()
    {
        try
        {
            _debounce.Change(_delay, Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
            // stopping
        }
    }

    /// <summary>Applies every change recorded so far and publishes the result; the route source calls it before serving its first table.</summary>
    public void Publish()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            var applied = 0;
            while (_changes.TryDequeue(out var change))
            {
                KubernetesInventorySource.Apply(_state, change);
                applied++;
            }

            if (applied > 0 || ReferenceEquals(_current, InventorySnapshot.Empty))
            {
                Volatile.Write(ref _current, _state.Snapshot());
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
        }

        _debounce.Dispose();
    }
}
