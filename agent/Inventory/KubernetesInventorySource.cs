using System.Collections.Concurrent;
using System.Diagnostics;
using k8s;
using k8s.Models;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// The inventory from a Kubernetes cluster: list+watch of every kind the mesh uses, fed through the same
/// <see cref="InventoryBuilder"/> as the standalone file and published to an <see cref="InventoryStore"/>.
/// <code>
///   pods, namespaces, services, EndpointSlices,        per kind: cache by uid
///   AuthorizationPolicies, PeerAuthentications ──watch──► (list, watch, 410 → relist, backoff) ──each change──┐
///                                                                                                           ▼
///   store.Publish ◄── InventoryState: apply only these objects ◄── weft.dev/netns dropped ◄── queue, debounce (10 ms)
/// </code>
/// A change costs work for the objects it touches, not for the cluster (<see cref="InventoryState"/>); a relist
/// after a lost watch applies only the difference.
/// Pods are watched cluster-wide, not only this node's: the data path needs every pod's IP, identity and
/// labels to name the peer of a connection and to match policies, and one watch of all pods costs the API
/// server less than a node-filtered watch plus a second full one. Only the fields the mesh reads are kept.
/// Nothing is published before every kind has been listed once (<see cref="Ready"/>): a partial inventory
/// would unenroll pods that a restarted agent is about to adopt.
/// A pod's weft.dev/netns annotation is never trusted here: anyone who may edit a pod could point it at
/// another pod's namespace. This source drops it; the node agent finds a local pod's namespace from its cgroup
/// (pod UID and QoS class, which the snapshot carries), since that is node-local knowledge, not the cluster's.
/// </summary>
internal sealed class KubernetesInventorySource : IDisposable
{
    private readonly InventoryStore _store;
    private readonly KubernetesInventoryOptions _options;
    private readonly IKubernetes _client;
    private readonly IKubernetesResourceWatch[] _watches;
    private readonly KubernetesWatchLoops _loops;
    private readonly Timer _debounce;
    private readonly object _rebuildGate = new();
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConcurrentQueue<InventoryChange> _changes = new();
    private readonly InventoryState _state;
    private HashSet<string> _lastWarnings = [];
    private long _appliedChanges;
    private long _applyTicks;
    private int _dirty;
    private long _pendingSince;
    private long _lastSyncTicks;
    private bool _disposed;

    private KubernetesInventorySource(IKubernetes client, bool ownsClient, InventoryStore store, KubernetesInventoryOptions options)
    {
        _client = client;
        _loops = new KubernetesWatchLoops(client, ownsClient);
        _store = store;
        _options = options;
        _state = new InventoryState(options.MeshRootNamespace);
        _debounce = new Timer(_ => RebuildInBackground(), null, Timeout.Infinite, Timeout.Infinite);
        // Bookmarks keep our resourceVersion fresh on quiet kinds, so a reconnect resumes instead of relisting.
        _watches =
        [
            Watch("namespaces", TrimNamespace, KubernetesCalls.Namespaces(client)),
            Watch("pods", TrimPod, KubernetesCalls.Pods(client)),
            Watch("services", TrimService, KubernetesCalls.Services(client)),
            Watch("endpointslices", TrimEndpointSlice, KubernetesCalls.EndpointSlices(client)),
            CustomWatch<V1Alpha1AuthorizationPolicy>("authorizationpolicies"),
            CustomWatch<V1Alpha1PeerAuthentication>("peerauthentications"),
        ];
    }

    /// <summary>True once every kind has been listed and the first snapshot published; stays true while watches reconnect.</summary>
    public bool Ready => _ready.Task.IsCompleted;

    /// <summary>When the last snapshot built from the watched objects was published; null before the first.</summary>
    public DateTimeOffset? LastSync => Interlocked.Read(ref _lastSyncTicks) is var ticks and > 0 ? new DateTimeOffset(ticks, TimeSpan.Zero) : null;

    /// <summary>Watch events (and relist differences) applied to the inventory so far.</summary>
    public long AppliedChanges => Interlocked.Read(ref _appliedChanges);

    /// <summary>Time spent applying them and publishing the snapshots, on the publishing thread.</summary>
    public TimeSpan ApplyTime => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _applyTicks));

    /// <summary>Completes when <see cref="Ready"/> becomes true.</summary>
    public Task WaitForReadyAsync(CancellationToken cancellationToken = default) => _ready.Task.WaitAsync(cancellationToken);

    /// <summary>Starts the watches and returns at once; the first snapshot is published when every kind has been listed.</summary>
    public static KubernetesInventorySource Start(KubernetesApiOptions api, InventoryStore store, KubernetesInventoryOptions options)
    {
        ArgumentNullException.ThrowIfNull(api);
        return Start(api.CreateClient(), store, options, ownsClient: true);
    }

    /// <inheritdoc cref="Start(KubernetesApiOptions, InventoryStore, KubernetesInventoryOptions)"/>
    public static KubernetesInventorySource Start(IKubernetes client, InventoryStore store, KubernetesInventoryOptions options) =>
        Start(client, store, options, ownsClient: false);

    private static KubernetesInventorySource Start(IKubernetes client, InventoryStore store, KubernetesInventoryOptions options, bool ownsClient)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        var source = new KubernetesInventorySource(client, ownsClient, store, options);
        source._loops.Start(source._watches);
        Log.Info("inventory", $"watching the Kubernetes API at {(client as k8s.Kubernetes)?.BaseUri} for node {options.NodeName}");
        return source;
    }

    public void Dispose()
    {
        lock (_rebuildGate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        _debounce.Dispose();
        _loops.Dispose();
    }

    private KubernetesResourceWatch<T, TList> Watch<T, TList>(string kind, Func<T, T> trim, (KubernetesListCall<TList> List, KubernetesWatchCall<T> Watch) calls)
        where T : class, IKubernetesObject<V1ObjectMeta>
        where TList : IMetadata<V1ListMeta>, IItems<T> =>
        new(kind, calls.List, calls.Watch, trim, OnChanged, _options, _changes.Enqueue);

    /// <summary>Weft's policy kinds through the custom objects API; watch events arrive untyped and are read into the model class.</summary>
    private KubernetesResourceWatch<T, KubernetesList<T>> CustomWatch<T>(string plural)
        where T : class, IKubernetesObject<V1ObjectMeta> =>
        Watch<T, KubernetesList<T>>(plural, item => item, (
            (c, l, ct) => _client.CustomObjects.ListCustomObjectForAllNamespacesAsync<KubernetesList<T>>(PolicyKinds.Group, PolicyKinds.Version, plural,
                continueParameter: c, limit: l, cancellationToken: ct),
            (rv, t, e, ct) => Typed<T>(_client.CustomObjects.WatchListCustomObjectForAllNamespacesAsync(PolicyKinds.Group, PolicyKinds.Version, plural,
                allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct), e)));

    internal static async IAsyncEnumerable<(WatchEventType Type, T Item)> Typed<T>(IAsyncEnumerable<(WatchEventType Type, object Item)> events, Action<Exception> onError)
        where T : class
    {
        await foreach (var (type, item) in events.ConfigureAwait(false))
        {
            T? typed = null;
            try
            {
                typed = item is System.Text.Json.JsonElement json ? KubernetesJson.Deserialize<T>(json.GetRawText()) : item as T;
            }
            catch (System.Text.Json.JsonException ex)
            {
                onError(ex);
            }

            if (typed is not null)
            {
                yield return (type, typed);
            }
        }
    }

    private void OnChanged()
    {
        Interlocked.Exchange(ref _dirty, 1);

        // Each event pushes the rebuild back by the debounce, but never past MaxDebounce after the first
        // unpublished change: a cluster that never goes quiet (constant pod churn) still gets new snapshots.
        var now = Environment.TickCount64;
        Interlocked.CompareExchange(ref _pendingSince, now, 0);
        var waited = TimeSpan.FromMilliseconds(now - Interlocked.Read(ref _pendingSince));
        var delay = _options.MaxDebounce - waited;
        ScheduleRebuild(delay < _options.Debounce ? (delay > TimeSpan.Zero ? delay : TimeSpan.Zero) : _options.Debounce);
    }

    private void ScheduleRebuild(TimeSpan delay)
    {
        try
        {
            _debounce.Change(delay, Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
            // stopping
        }
    }

    private void RebuildInBackground()
    {
        try
        {
            lock (_rebuildGate)
            {
                if (!_disposed)
                {
                    Rebuild();
                }
            }
        }
        catch (Exception ex)
        {
            // A timer thread must never take the agent down; the last good snapshot stays in place.
            Log.Error("inventory", $"building the inventory from the Kubernetes API failed: {ex}");
            Interlocked.Exchange(ref _dirty, 1); // so the retry builds again rather than finding nothing changed
            ScheduleRebuild(_options.MaxBackoff);
        }
    }

    /// <summary>Caller holds the gate.</summary>
    private void Rebuild()
    {
        Interlocked.Exchange(ref _pendingSince, 0);
        var started = Stopwatch.GetTimestamp();

        // Applied as they come, also before every kind is listed: the queue then never holds a whole cluster's
        // objects, only what arrived since the last pass. The state does not depend on when it is applied.
        var applied = 0;
        while (_changes.TryDequeue(out var change))
        {
            applied++;
            Apply(_state, change);
        }

        if (_watches.FirstOrDefault(w => !w.Listed) is { } waiting)
        {
            Interlocked.Add(ref _appliedChanges, applied);
            Interlocked.Add(ref _applyTicks, Stopwatch.GetTimestamp() - started);
            Log.Debug("inventory", $"not publishing yet: {waiting.Kind} not listed");
            return; // the dirty flag stays set: the last kind's list triggers the first build
        }

        if (Interlocked.Exchange(ref _dirty, 0) == 0 && applied == 0)
        {
            return;
        }

        Interlocked.Add(ref _appliedChanges, applied);
        if (!_state.HasChanges && _ready.Task.IsCompleted)
        {
            Interlocked.Add(ref _applyTicks, Stopwatch.GetTimestamp() - started);
            return; // changes that change nothing the data path reads (a relabel of a field we drop)
        }

        var built = _state.Snapshot();

        // Only new warnings are worth a line; without any (the usual case) the comparison costs nothing.
        HashSet<string> warnings = built.WarningCount == 0 ? [] : built.Warnings.ToHashSet(StringComparer.Ordinal);
        foreach (var warning in warnings)
        {
            if (!_lastWarnings.Contains(warning))
            {
                Log.Warn("inventory", $"kubernetes: {warning}");
            }
        }

        _lastWarnings = warnings;
        var published = _store.Publish(built);
        Interlocked.Add(ref _applyTicks, Stopwatch.GetTimestamp() - started);
        Interlocked.Exchange(ref _lastSyncTicks, published.LoadedAt.UtcTicks);
        var first = _ready.TrySetResult();
        var message = $"{(first ? "synced with" : "updated from")} the Kubernetes API: version {published.Version}, "
            + $"{published.WorkloadCount} pods, {published.ServiceCount} services, "
            + $"{published.Policies.AuthorizationPolicies.Length} authorization policies, "
            + $"{published.GetLocalEnrolledWorkloads(_options.NodeName).Length} enrolled on {_options.NodeName}";
        if (first)
        {
            Log.Info("inventory", message);
        }
        else
        {
            Log.Debug("inventory", message);
        }
    }

    /// <summary>One change from a watch, applied to the state as this source does (the fuzz target uses it too).</summary>
    internal static void Apply(InventoryState state, InventoryChange change)
    {
        if (change.Listed is { } listed)
        {
            state.RemoveAllExcept(change.Kind, listed);
        }
        else if (change.Object is null)
        {
            state.Remove(change.Kind, change.Id);
        }
        else
        {
            state.Upsert(change.Id, change.Object is V1Pod pod ? WithoutNetnsAnnotation(pod) : change.Object);
        }
    }

    /// <summary>Drops a weft.dev/netns annotation, which only the standalone file may set.</summary>
    private static V1Pod WithoutNetnsAnnotation(V1Pod pod)
    {
        if (pod.Metadata.Annotations?.ContainsKey(InventoryBuilder.NetnsAnnotation) != true)
        {
            return pod;
        }

        var rewritten = new Dictionary<string, string>(pod.Metadata.Annotations, StringComparer.Ordinal);
        rewritten.Remove(InventoryBuilder.NetnsAnnotation);
        return new V1Pod
        {
            ApiVersion = pod.ApiVersion,
            Kind = pod.Kind,
            Metadata = new V1ObjectMeta
            {
                Name = pod.Metadata.Name,
                NamespaceProperty = pod.Metadata.NamespaceProperty,
                Uid = pod.Metadata.Uid,
                Labels = pod.Metadata.Labels,
                Annotations = rewritten,
            },
            Spec = pod.Spec,
            Status = pod.Status,
        };
    }

    // Only the fields InventoryBuilder and netns discovery read are kept: a cluster's pods carry far more.
    internal static V1Pod TrimPod(V1Pod pod) => new()
    {
        ApiVersion = "v1",
        Kind = "Pod",
        Metadata = TrimMetadata(pod.Metadata, keepAnnotations: true),
        Spec = pod.Spec is null ? null : new V1PodSpec
        {
            NodeName = pod.Spec.NodeName,
            ServiceAccountName = pod.Spec.ServiceAccountName,
            HostNetwork = pod.Spec.HostNetwork,
        },
        Status = pod.Status is null ? null : new V1PodStatus
        {
            Phase = pod.Status.Phase,
            PodIP = pod.Status.PodIP,
            PodIPs = pod.Status.PodIPs,
            HostIP = pod.Status.HostIP,
            HostIPs = pod.Status.HostIPs,
            QosClass = pod.Status.QosClass,
        },
    };

    private static V1Namespace TrimNamespace(V1Namespace ns) => new()
    {
        ApiVersion = "v1",
        Kind = "Namespace",
        Metadata = TrimMetadata(ns.Metadata, keepAnnotations: false),
    };

    private static V1Service TrimService(V1Service service)
    {
        service.ApiVersion = "v1";
        service.Kind = "Service";
        service.Metadata = TrimMetadata(service.Metadata, keepAnnotations: false);
        service.Status = null;
        return service;
    }

    private static V1EndpointSlice TrimEndpointSlice(V1EndpointSlice slice)
    {
        slice.ApiVersion = "discovery.k8s.io/v1";
        slice.Kind = "EndpointSlice";
        slice.Metadata = TrimMetadata(slice.Metadata, keepAnnotations: false);
        return slice;
    }

    private static V1ObjectMeta TrimMetadata(V1ObjectMeta metadata, bool keepAnnotations) => new()
    {
        Name = metadata.Name,
        NamespaceProperty = metadata.NamespaceProperty,
        Uid = metadata.Uid,
        ResourceVersion = metadata.ResourceVersion,
        Labels = metadata.Labels,
        Annotations = keepAnnotations && metadata.Annotations is { Count: > 0 } annotations
            ? annotations.Where(a => a.Key.StartsWith("weft.dev/", StringComparison.Ordinal)).ToDictionary(a => a.Key, a => a.Value)
            : null,
    };
}
