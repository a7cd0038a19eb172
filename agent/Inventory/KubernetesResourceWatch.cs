using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Weft.Inventory;

/// <summary>Lists one page of a kind cluster-wide (the first page when <paramref name="continueToken"/> is null).</summary>
internal delegate Task<TList> KubernetesListCall<TList>(string? continueToken, int limit, CancellationToken cancellationToken);

/// <summary>Watches a kind cluster-wide from <paramref name="resourceVersion"/>, with bookmarks; ERROR events go to <paramref name="onError"/>.</summary>
internal delegate IAsyncEnumerable<(WatchEventType Type, T Item)> KubernetesWatchCall<T>(
    string resourceVersion, int timeoutSeconds, Action<Exception> onError, CancellationToken cancellationToken);

/// <summary>
/// One object added or changed (<paramref name="Object"/> set) or deleted (null), by kind (its model type) and uid;
/// or, with <paramref name="Listed"/> set, a full list of the kind: every object of it whose id is not listed is gone.
/// </summary>
internal readonly record struct InventoryChange(Type Kind, string Id, IKubernetesObject? Object, IReadOnlySet<string>? Listed = null);

/// <summary>What every kind's watch offers its owner: whether the first full list arrived.</summary>
internal interface IKubernetesResourceWatch
{
    string Kind { get; }

    bool Listed { get; }

    Task RunAsync(CancellationToken cancellationToken);
}

/// <summary>
/// List, then watch, one kind cluster-wide, the way client-go's reflector does, handing each change to the owner.
/// <code>
///   list (pages) ─► replace cache, rv ─► watch from rv (bookmarks on) ─┬─ ADDED/MODIFIED/DELETED ─► cache, rv, changed()
///        ▲                                                            ├─ BOOKMARK ─► rv only
///        │                                                            ├─ server ends the watch ─► watch again from rv
///        ├──────────── 410 Gone (ERROR event or HTTP status) ─────────┤
///        └── backoff (doubling, capped) ◄── connection lost, 5xx ─────┴─► watch again from rv (relist when rv is unknown)
/// </code>
/// A failed list leaves the cache as it was, so the last good snapshot stays in place until a list succeeds.
/// The watch keeps no object: each one goes to the owner, which keeps its compact form (<see cref="InventoryState"/>)
/// and ignores one equal to what it holds. A cache of the model objects would cost several times the compact
/// state (3.4 KiB of the 4.7 KiB per pod issue 16 measured in Kubernetes mode).
/// </summary>
internal sealed class KubernetesResourceWatch<T, TList> : IKubernetesResourceWatch
    where T : class, IKubernetesObject<V1ObjectMeta>
    where TList : IMetadata<V1ListMeta>, IItems<T>
{
    private readonly KubernetesListCall<TList> _list;
    private readonly KubernetesWatchCall<T> _watch;
    private readonly Func<T, T> _trim;
    private readonly Action _changed;
    private readonly Action<InventoryChange>? _record;
    private readonly KubernetesInventoryOptions _options;
    private volatile bool _listed;

    /// <param name="changed">Called after every change (and after each list), to schedule a publish.</param>
    /// <param name="record">Called first with each change itself, in the order they happened, so the owner can apply only what changed.</param>
    public KubernetesResourceWatch(string kind, KubernetesListCall<TList> list, KubernetesWatchCall<T> watch, Func<T, T> trim, Action changed,
        KubernetesInventoryOptions options, Action<InventoryChange>? record = null)
    {
        _record = record;
        Kind = kind;
        _list = list;
        _watch = watch;
        _trim = trim;
        _changed = changed;
        _options = options;
    }

    public string Kind { get; }

    public bool Listed => _listed;

    /// <summary>The resourceVersion the next watch starts from (tests look at it).</summary>
    public string? ResourceVersion { get; private set; }

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var failures = 0;
        var random = new Random();
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                if (ResourceVersion is null)
                {
                    await ListAsync(cancellationToken).ConfigureAwait(false);
                }

                var timeout = _options.WatchTimeout + TimeSpan.FromSeconds(random.NextDouble() * _options.WatchTimeout.TotalSeconds);
                var outcome = await WatchAsync(ResourceVersion!, timeout, cancellationToken).ConfigureAwait(false);
                if (outcome == WatchOutcome.Expired)
                {
                    Log.Info("inventory", $"watch {Kind}: resourceVersion {ResourceVersion} expired (410 Gone); listing again");
                    ResourceVersion = null;
                    continue;
                }

                if (failures > 0)
                {
                    Log.Info("inventory", $"watch {Kind}: connected again after {failures} failed attempt(s)");
                }

                failures = 0;
                if (outcome == WatchOutcome.EndedEarly)
                {
                    // A server that closes every watch at once must not make us spin.
                    await Task.Delay(_options.InitialBackoff, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (HttpOperationException e) when (e.Response?.StatusCode == HttpStatusCode.Gone)
            {
                Log.Info("inventory", $"{Kind}: 410 Gone from the API server; listing again");
                ResourceVersion = null;
            }
            catch (Exception e)
            {
                failures++;
                var delay = Backoff(failures, random);
                var what = ResourceVersion is null ? "list" : "watch";
                var message = $"{what} {Kind} failed ({Describe(e)}); retrying in {delay.TotalSeconds:0.0#}s"
                    + (_listed ? ", keeping the last good inventory" : "");
                if (failures == 1 || failures % 10 == 0)
                {
                    Log.Warn("inventory", message);
                }
                else
                {
                    Log.Debug("inventory", message);
                }

                try
                {
                    await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    private async Task ListAsync(CancellationToken cancellationToken)
    {
        var items = new Dictionary<string, T>(StringComparer.Ordinal);
        string? continueToken = null;
        string? resourceVersion;
        do
        {
            var page = await _list(continueToken, _options.ListPageSize, cancellationToken).ConfigureAwait(false);
            foreach (var item in page.Items ?? [])
            {
                if (item?.Metadata is not null)
                {
                    items[Key(item)] = _trim(item);
                }
            }

            continueToken = page.Metadata?.ContinueProperty;
            resourceVersion = page.Metadata?.ResourceVersion;
        }
        while (!string.IsNullOrEmpty(continueToken));

        if (string.IsNullOrEmpty(resourceVersion))
        {
            throw new InvalidOperationException($"the {Kind} list carried no metadata.resourceVersion to watch from");
        }

        // Objects deleted while no watch was running are the ones this list lacks: the owner drops them first, then
        // takes the listed objects, ignoring those equal to what it holds, so a relist after a lost watch changes
        // only what changed meanwhile (and costs one comparison per object).
        _record?.Invoke(new InventoryChange(typeof(T), "", null, items.Keys.ToHashSet(StringComparer.Ordinal)));
        foreach (var (key, item) in items)
        {
            _record?.Invoke(new InventoryChange(typeof(T), key, item));
        }

        ResourceVersion = resourceVersion;
        var first = !_listed;
        _listed = true;
        Log.Info("inventory", $"{(first ? "listed" : "listed again")} {items.Count} {Kind} (resourceVersion {resourceVersion})");
        _changed();
    }

    internal async Task<WatchOutcome> WatchAsync(string resourceVersion, TimeSpan timeout, CancellationToken cancellationToken)
    {
        // The server ends the watch after timeoutSeconds; if it goes silent instead (a dead peer), our own deadline does.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout + TimeSpan.FromSeconds(30));
        var expired = false;
        var events = 0;
        var started = DateTime.UtcNow;
        Exception? streamError = null;
        try
        {
            await foreach (var (type, item) in _watch(resourceVersion, (int)timeout.TotalSeconds, OnError, deadline.Token).ConfigureAwait(false))
            {
                events++;
                if (item?.Metadata is null)
                {
                    // Nothing to key it by; failing the watch instead would replay the same event forever.
                    Log.Warn("inventory", $"watch {Kind}: skipped a {type} event whose object has no metadata");
                    continue;
                }

                if (item.Metadata.ResourceVersion is { Length: > 0 } version)
                {
                    ResourceVersion = version;
                }

                switch (type)
                {
                    case WatchEventType.Added:
                    case WatchEventType.Modified:
                        _record?.Invoke(new InventoryChange(typeof(T), Key(item), _trim(item)));
                        _changed();
                        break;
                    case WatchEventType.Deleted:
                        // The owner ignores the id of an object it does not hold.
                        _record?.Invoke(new InventoryChange(typeof(T), Key(item), null));
                        _changed();
                        break;
                    case WatchEventType.Bookmark:
                        break;
                }

                if (expired || streamError is not null)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"the watch sent nothing for {(DateTime.UtcNow - started).TotalSeconds:0}s");
        }

        if (expired)
        {
            return WatchOutcome.Expired;
        }

        if (streamError is not null)
        {
            throw streamError;
        }

        return events == 0 && DateTime.UtcNow - started < TimeSpan.FromSeconds(1) ? WatchOutcome.EndedEarly : WatchOutcome.Ended;

        void OnError(Exception e)
        {
            // The client reports ERROR events (a Status object) here, not as items.
            if (e is KubernetesException { Status.Code: 410 })
            {
                expired = true;
            }
            else if (e is KubernetesException status)
            {
                streamError = new InvalidOperationException($"the watch ended with an error: {status.Status?.Code} {status.Status?.Reason} {status.Status?.Message}", e);
            }
            else
            {
                Log.Warn("inventory", $"watch {Kind}: skipped an event that could not be read: {e.Message}");
            }
        }
    }

    private TimeSpan Backoff(int failures, Random random)
    {
        var exponential = _options.InitialBackoff.TotalMilliseconds * Math.Pow(2, Math.Min(failures - 1, 20));
        var capped = Math.Min(exponential, _options.MaxBackoff.TotalMilliseconds);

        // Jitter so a restarted API server is not hit by every agent in the same millisecond.
        return TimeSpan.FromMilliseconds(capped * (0.8 + (0.4 * random.NextDouble())));
    }

    private static string Key(T item) =>
        string.IsNullOrEmpty(item.Metadata.Uid) ? $"{item.Metadata.NamespaceProperty}/{item.Metadata.Name}" : item.Metadata.Uid;

    private static string Describe(Exception e) => e switch
    {
        HttpOperationException { Response.StatusCode: HttpStatusCode.NotFound } => "HTTP 404: the API server does not serve this resource; is its CRD installed?",
        HttpOperationException { Response.StatusCode: HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized } http =>
            $"HTTP {(int)http.Response.StatusCode}: does the agent's ClusterRole grant list and watch on it?",
        HttpOperationException http => $"HTTP {(int?)http.Response?.StatusCode} {http.Response?.ReasonPhrase}",
        _ when e.InnerException is { } inner && e is HttpRequestException or IOException => $"{e.Message}: {inner.Message}",
        _ => e.Message,
    };

    internal enum WatchOutcome
    {
        Ended,
        EndedEarly,
        Expired,
    }
}
