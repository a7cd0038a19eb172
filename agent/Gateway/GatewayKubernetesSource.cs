using System.Text.Json;
using k8s;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Gateway;

/// <summary>How <c>weft gateway</c> without --inventory watches the cluster and reports status.</summary>
internal sealed record GatewayKubernetesOptions
{
    /// <summary>List and watch tuning (backoff, watch timeout, page size); the node name is unused here.</summary>
    public KubernetesInventoryOptions Watch { get; init; } = new() { NodeName = "gateway" };

    /// <summary>Quiet time after a change before compiling, so a burst of events makes one route table.</summary>
    public TimeSpan Debounce { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Write Ingress, GatewayClass, Gateway and HTTPRoute status (off: read-only, e.g. a second gateway for tests).</summary>
    public bool WriteStatus { get; init; } = true;

    /// <inheritdoc cref="GatewayStatusOptions"/>
    public GatewayStatusOptions Status { get; init; } = new();

    /// <summary>The Gateways ("namespace/name") served on addresses of their own: one that is not (yet) a Gateway of our class is warned about.</summary>
    public IReadOnlyCollection<string> OwnAddresses { get; init; } = [];

    /// <summary>Also watch Pods (trimmed) to know which backends are meshed (<see cref="GatewayKubernetesSource.Mesh"/>); on when the gateway has a mesh identity.</summary>
    public bool MeshMembership { get; init; }
}

/// <summary>
/// The gateway's configuration from a Kubernetes cluster: list+watch (the agent's
/// <see cref="KubernetesResourceWatch{T, TList}"/>: relist on 410, backoff, bookmarks) of Namespaces, Services,
/// EndpointSlices, Ingresses, IngressClasses, kubernetes.io/tls Secrets and the Gateway API kinds (through the
/// custom objects API), compiled by the same <see cref="RouteCompiler"/> as the standalone file.
/// <code>
///   watches ─► changed ─► debounce ─► every kind listed? ─► InventoryBuilder + RouteCompiler ─┬─► Current (served)
///                                                                                            └─► GatewayStatusWriter (only what changed)
/// </code>
/// An object the model cannot read (a watch event or list item of the wrong shape) is skipped with a log line
/// naming it, and its last readable version stays in the cache, so its routes keep being served; a compile
/// failure keeps the last good table. Nothing is served before every kind has been listed once.
/// </summary>
internal sealed class GatewayKubernetesSource : IDisposable
{
    private readonly IKubernetes _client;
    private readonly GatewayMetrics _metrics;
    private readonly GatewayKubernetesOptions _options;
    private readonly Dictionary<string, IKubernetesResourceWatch> _watches = new(StringComparer.Ordinal);

    // The objects of each kind as the watches last reported them: the watches keep none (the agent's inventory
    // keeps a compact form instead), and the route compiler reads the whole objects.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, System.Collections.Concurrent.ConcurrentDictionary<string, IKubernetesObject>> _objects = new(StringComparer.Ordinal);
    private readonly KubernetesWatchLoops _loops;
    private readonly Timer _debounce;
    private readonly object _gate = new();
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly GatewayStatusWriter? _status;
    private readonly SemaphoreSlim _statusSignal = new(0, 1);
    private (IReadOnlyList<IKubernetesObject> Objects, GatewayStatusReport Report)? _pendingStatus;
    private RouteTable _current = RouteTable.Empty;
    private long _version;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> _unreadable = new(StringComparer.Ordinal);
    private string? _lastError;
    private HashSet<string> _lastWarnings = [];
    private bool _disposed;
    private readonly GatewayMeshMembership? _mesh;

    private GatewayKubernetesSource(IKubernetes client, bool ownsClient, GatewayMetrics metrics, GatewayKubernetesOptions options)
    {
        _client = client;
        _loops = new KubernetesWatchLoops(client, ownsClient);
        _metrics = metrics;
        _options = options;
        _debounce = new Timer(_ => Rebuild(), null, Timeout.Infinite, Timeout.Infinite);
        if (options.WriteStatus)
        {
            _status = new GatewayStatusWriter(client, options.Status);
        }

        var core = client.CoreV1;
        var networking = client.NetworkingV1;
        Add(Watch("namespaces", KubernetesCalls.Namespaces(client)));
        Add(Watch("services", KubernetesCalls.Services(client)));
        Add(Watch("endpointslices", KubernetesCalls.EndpointSlices(client)));
        Add(Watch<V1Ingress, V1IngressList>("ingresses",
            (c, l, ct) => networking.ListIngressForAllNamespacesAsync(continueParameter: c, limit: l, cancellationToken: ct),
            (rv, t, e, ct) => networking.WatchListIngressForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct)));
        Add(Watch<V1IngressClass, V1IngressClassList>("ingressclasses",
            (c, l, ct) => networking.ListIngressClassAsync(continueParameter: c, limit: l, cancellationToken: ct),
            (rv, t, e, ct) => networking.WatchListIngressClassAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct)));

        // Only TLS Secrets: the gateway has no business holding every Secret of the cluster in memory.
        const string tlsOnly = "type=kubernetes.io/tls";
        Add(Watch<V1Secret, V1SecretList>("secrets",
            (c, l, ct) => core.ListSecretForAllNamespacesAsync(continueParameter: c, fieldSelector: tlsOnly, limit: l, cancellationToken: ct),
            (rv, t, e, ct) => core.WatchListSecretForAllNamespacesAsync(allowWatchBookmarks: true, fieldSelector: tlsOnly, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct)));
        Add(Custom<GatewayClassResource>("v1", "gatewayclasses", clusterScoped: true));
        Add(Custom<GatewayResource>("v1", "gateways"));
        Add(Custom<HttpRouteResource>("v1", "httproutes"));
        Add(Custom<ReferenceGrantResource>("v1beta1", "referencegrants"));
        if (options.MeshMembership)
        {
            // Pods only say which backends are meshed: their changes publish the membership, never recompile routes.
            _mesh = new GatewayMeshMembership(TimeSpan.FromMilliseconds(10));
            var pods = KubernetesCalls.Pods(client);
            Add(new KubernetesResourceWatch<V1Pod, V1PodList>("pods", pods.List, pods.Watch, GatewayMeshMembership.Trim,
                () =>
                {
                    _mesh.Changed();
                    if (!Ready)
                    {
                        OnChanged(); // the first table waits for the pods' first list too
                    }
                }, _options.Watch, _mesh.Record));
        }
    }

    /// <summary>Which pods are meshed, from the pod and namespace watches; null unless <see cref="GatewayKubernetesOptions.MeshMembership"/>.</summary>
    public Func<InventorySnapshot>? Mesh => _mesh is null ? null : () => _mesh.Current;

    /// <summary>The routes served now; read once per request.</summary>
    public RouteTable Current => Volatile.Read(ref _current);

    /// <summary>Why the cluster's configuration as it is now is not what is served, or null.</summary>
    public string? LastError => !Ready ? "not synced with the Kubernetes API yet: every kind must be listed once"
        : Volatile.Read(ref _lastError) ?? _unreadable.Values.Order(StringComparer.Ordinal).FirstOrDefault();

    public bool Ready => _ready.Task.IsCompleted;

    /// <summary>Raised after a new route table is in place.</summary>
    public event Action<RouteTable>? Changed;

    /// <summary>Status patches written so far (each one a change: unchanged status is never written).</summary>
    public long StatusWrites => _status?.Writes ?? 0;

    public Task WaitForReadyAsync(CancellationToken cancellationToken = default) => _ready.Task.WaitAsync(cancellationToken);

    /// <summary>Starts the watches and returns at once; routes are served once every kind has been listed.</summary>
    public static GatewayKubernetesSource Start(KubernetesApiOptions api, GatewayMetrics metrics, GatewayKubernetesOptions options)
    {
        ArgumentNullException.ThrowIfNull(api);
        return Start(api.CreateClient(), metrics, options, ownsClient: true);
    }

    /// <inheritdoc cref="Start(KubernetesApiOptions, GatewayMetrics, GatewayKubernetesOptions)"/>
    public static GatewayKubernetesSource Start(IKubernetes client, GatewayMetrics metrics, GatewayKubernetesOptions options) =>
        Start(client, metrics, options, ownsClient: false);

    private static GatewayKubernetesSource Start(IKubernetes client, GatewayMetrics metrics, GatewayKubernetesOptions options, bool ownsClient)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(metrics);
        ArgumentNullException.ThrowIfNull(options);
        var source = new GatewayKubernetesSource(client, ownsClient, metrics, options);
        source._loops.Start(source._watches.Values, source.StatusLoopAsync);
        Log.Info("gateway", $"watching the Kubernetes API at {(client as k8s.Kubernetes)?.BaseUri} for Ingresses (class {RouteCompiler.BuiltInIngressClass}) and Gateways of class controller {GatewayApiKinds.ControllerName}");
        return source;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        _debounce.Dispose();
        _loops.Dispose();
        _mesh?.Dispose();
    }

    private void Add(IKubernetesResourceWatch watch) => _watches[watch.Kind] = watch;

    private KubernetesResourceWatch<T, TList> Watch<T, TList>(string kind, (KubernetesListCall<TList> List, KubernetesWatchCall<T> Watch) calls)
        where T : class, IKubernetesObject<V1ObjectMeta>
        where TList : IMetadata<V1ListMeta>, IItems<T> =>
        Watch(kind, calls.List, calls.Watch);

    private KubernetesResourceWatch<T, TList> Watch<T, TList>(string kind, KubernetesListCall<TList> list, KubernetesWatchCall<T> watch)
        where T : class, IKubernetesObject<V1ObjectMeta>
        where TList : IMetadata<V1ListMeta>, IItems<T> =>
        new(kind, list, watch, item => item, OnChanged, _options.Watch, change => Record(kind, change));

    /// <summary>Called by a watch, in order, before it signals the change.</summary>
    private void Record(string kind, InventoryChange change)
    {
        if (kind == "namespaces")
        {
            _mesh?.Record(change);
        }

        var objects = _objects.GetOrAdd(kind, _ => new(StringComparer.Ordinal));
        if (change.Listed is { } listed)
        {
            foreach (var id in objects.Keys.Where(id => !listed.Contains(id)))
            {
                objects.TryRemove(id, out _);
            }
        }
        else if (change.Object is { } item)
        {
            objects[change.Id] = item;
        }
        else
        {
            objects.TryRemove(change.Id, out _);
        }
    }

    private IEnumerable<IKubernetesObject> Items(string kind) =>
        _objects.TryGetValue(kind, out var objects) ? objects.Values : [];

    /// <summary>
    /// A Gateway API kind through the custom objects API. Lists arrive untyped and are read item by item, so one
    /// object of the wrong shape costs that object (its last readable version is kept), not the whole kind.
    /// </summary>
    private KubernetesResourceWatch<T, KubernetesList<T>> Custom<T>(string version, string plural, bool clusterScoped = false)
        where T : class, IKubernetesObject<V1ObjectMeta>
    {
        var custom = _client.CustomObjects;
        return Watch<T, KubernetesList<T>>(plural,
            async (c, l, ct) =>
            {
                var page = clusterScoped
                    ? await custom.ListClusterCustomObjectAsync<JsonElement>(GatewayApiKinds.Group, version, plural, continueParameter: c, limit: l, cancellationToken: ct).ConfigureAwait(false)
                    : await custom.ListCustomObjectForAllNamespacesAsync<JsonElement>(GatewayApiKinds.Group, version, plural, continueParameter: c, limit: l, cancellationToken: ct).ConfigureAwait(false);
                return ReadList<T>(page, plural);
            },
            (rv, t, e, ct) => Typed<T>(clusterScoped
                ? custom.WatchListClusterCustomObjectAsync(GatewayApiKinds.Group, version, plural, allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct)
                : custom.WatchListCustomObjectForAllNamespacesAsync(GatewayApiKinds.Group, version, plural, allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct), plural));
    }

    private KubernetesList<T> ReadList<T>(JsonElement page, string plural)
        where T : class, IKubernetesObject<V1ObjectMeta>
    {
        var items = new List<T>();
        if (page.TryGetProperty("items", out var array) && array.ValueKind == JsonValueKind.Array)
        {
            foreach (var element in array.EnumerateArray())
            {
                if (Read<T>(element, plural) is { } item)
                {
                    items.Add(item);
                }
                else if (Uid(element) is { } uid
                    && Items(plural).OfType<T>().FirstOrDefault(o => o.Metadata.Uid == uid) is { } lastGood)
                {
                    items.Add(lastGood);
                }
            }
        }

        var metadata = page.TryGetProperty("metadata", out var meta) ? KubernetesJson.Deserialize<V1ListMeta>(meta.GetRawText()) : null;
        return new KubernetesList<T>(items, metadata: metadata);
    }

    private async IAsyncEnumerable<(WatchEventType Type, T Item)> Typed<T>(IAsyncEnumerable<(WatchEventType Type, object Item)> events, string plural)
        where T : class, IKubernetesObject<V1ObjectMeta>
    {
        await foreach (var (type, item) in events.ConfigureAwait(false))
        {
            var typed = item is JsonElement json ? Read<T>(json, plural) : item as T;
            if (typed is not null)
            {
                yield return (type, typed);
            }
        }
    }

    /// <summary>The object, or null with a log line naming it when it does not have the shape of its kind.</summary>
    private T? Read<T>(JsonElement element, string plural)
        where T : class
    {
        var name = element.TryGetProperty("metadata", out var m) && m.ValueKind == JsonValueKind.Object
            ? $"{(m.TryGetProperty("namespace", out var ns) ? ns.GetString() + "/" : "")}{(m.TryGetProperty("name", out var n) ? n.GetString() : "?")}" : "?";
        try
        {
            var item = KubernetesJson.Deserialize<T>(element.GetRawText());
            _unreadable.TryRemove($"{plural} {name}", out _);
            return item;
        }
        catch (JsonException ex)
        {
            var message = $"{plural} {name} cannot be read ({ex.Message}); keeping its last good version";
            _unreadable[$"{plural} {name}"] = message;
            Log.Warn("gateway", message);
            return null;
        }
    }

    private static string? Uid(JsonElement element) =>
        element.TryGetProperty("metadata", out var m) && m.TryGetProperty("uid", out var uid) ? uid.GetString() : null;

    private void OnChanged()
    {
        try
        {
            _debounce.Change(_options.Debounce, Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
            // stopping
        }
    }

    private void Rebuild()
    {
        lock (_gate)
        {
            if (_disposed || _watches.Values.FirstOrDefault(w => !w.Listed) is not null)
            {
                return; // the last kind's list triggers the first build
            }

            // Before any table is served, so no request reaches a meshed backend before the gateway knows it is meshed.
            _mesh?.Publish();
            var objects = _watches.Keys.SelectMany(Items).ToList();
            var report = new GatewayStatusReport();
            RouteTable table;
            try
            {
                var inventory = InventoryBuilder.Build(objects);
                table = RouteCompiler.Compile(objects, inventory, report);
            }
            catch (Exception ex)
            {
                var error = $"compiling the routes failed, serving the last good version {Current.Version}: {ex.Message}";
                Volatile.Write(ref _lastError, error);
                Log.Error("gateway", error);
                return;
            }

            table = table.Versioned(++_version, [.. table.Warnings, .. table.UnknownGateways(_options.OwnAddresses)]);
            var warnings = table.Warnings.ToHashSet(StringComparer.Ordinal);
            foreach (var warning in table.Warnings.Where(w => !_lastWarnings.Contains(w)))
            {
                Log.Warn("gateway", warning);
            }

            _lastWarnings = warnings;
            Volatile.Write(ref _current, table);
            Volatile.Write(ref _lastError, null);
            _metrics.RoutesServed(table);
            var first = _ready.TrySetResult();
            var message = $"routes version {table.Version} from the Kubernetes API: {table.Http.Hosts.Sum(h => h.Routes.Length)} http, {table.Https.Hosts.Sum(h => h.Routes.Length)} https, {table.Certificates.Count} certificates"
                + (table.Warnings.IsEmpty ? "" : $", {table.Warnings.Length} warnings");
            if (first)
            {
                Log.Info("gateway", message);
            }
            else
            {
                Log.Debug("gateway", message);
            }

            Changed?.Invoke(table);
            if (_status is not null)
            {
                _pendingStatus = (objects, report);
                if (_statusSignal.CurrentCount == 0)
                {
                    _statusSignal.Release();
                }
            }
        }
    }

    /// <summary>
    /// Writes status for the latest compiled version, one pass at a time, off the compile path: a slow API server
    /// delays status, never routes. A pass that failed is retried after the initial backoff.
    /// </summary>
    private async Task StatusLoopAsync(CancellationToken token)
    {
        if (_status is null)
        {
            return;
        }

        while (!token.IsCancellationRequested)
        {
            try
            {
                await _statusSignal.WaitAsync(token).ConfigureAwait(false);
                (IReadOnlyList<IKubernetesObject> Objects, GatewayStatusReport Report)? pending;
                lock (_gate)
                {
                    pending = _pendingStatus;
                    _pendingStatus = null;
                }

                if (pending is not { } work)
                {
                    continue;
                }

                if (!await _status.WriteAsync(work.Objects, work.Report, token).ConfigureAwait(false))
                {
                    await Task.Delay(_options.Watch.InitialBackoff * 10, token).ConfigureAwait(false);
                    lock (_gate)
                    {
                        // Unless a newer version came meanwhile, this one is tried again.
                        _pendingStatus ??= work;
                        if (_statusSignal.CurrentCount == 0)
                        {
                            _statusSignal.Release();
                        }
                    }
                }
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                Log.Error("gateway", $"writing status failed: {ex.Message}");
            }
        }
    }
}
