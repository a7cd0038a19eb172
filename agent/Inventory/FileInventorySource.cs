using System.Security.Cryptography;
using System.Text;
using k8s;
using k8s.Models;

namespace Weft.Inventory;

/// <summary>Tuning for <see cref="FileInventorySource"/>; the defaults suit an agent.</summary>
internal sealed record FileInventorySourceOptions
{
    /// <summary>Quiet time after the last change event before reloading, so a save that writes in pieces is read once, whole.</summary>
    public TimeSpan Debounce { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>How often to compare the file's size and modification time, for changes the watcher misses.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Extra "apiVersion/kind" to type mappings (custom resources) on top of KubernetesClient's models and Weft's policy kinds (<see cref="Weft.Policy.PolicyKinds.All"/>, always known).</summary>
    public IDictionary<string, Type>? ExtraKinds { get; init; }

    /// <summary>
    /// A larger file is refused before it is read (and the last good snapshot kept), so a runaway generator or a
    /// hostile file cannot exhaust the agent's memory. 100,000 pods with 10,000 Services and their
    /// EndpointSlices take about 60 MiB of YAML.
    /// </summary>
    public long MaxFileBytes { get; init; } = 512L * 1024 * 1024;

    /// <summary>Where AuthorizationPolicies and PeerAuthentications apply mesh-wide (Istio's root namespace).</summary>
    public string MeshRootNamespace { get; init; } = Weft.Policy.PolicyKinds.DefaultMeshRootNamespace;

    /// <summary>
    /// Given every object of a file that built, with its snapshot, before the snapshot is published (the gateway
    /// compiles its routes here). An <see cref="InventoryLoadException"/> from it refuses the file like bad YAML.
    /// </summary>
    public Action<IReadOnlyList<k8s.IKubernetesObject>, InventorySnapshot>? Loaded { get; init; }
}

/// <summary>
/// The standalone inventory: a YAML file of Kubernetes objects, read through <see cref="InventoryBuilder"/>
/// and published to an <see cref="InventoryStore"/>, then reloaded whenever it changes.
/// <code>
///   FileSystemWatcher (dir) ─┐                      ┌─ same bytes as last attempt ─► nothing
///                            ├─► debounce ─► read ─►┼─ bad YAML ─► keep snapshot, log once, LastError
///   poll size+mtime ─────────┘                      └─ good ─► diff by object ─► InventoryState ─► store.Publish (version + 1)
/// </code>
/// A reload reads the whole file (a file has no per-object events) but applies only the objects that differ
/// from the held ones, so the data path's update costs what changed.
/// Editors that save by writing a new file and renaming it over the old one, and Kubernetes ConfigMap
/// volumes that swap a "..data" symlink, are both seen: the watcher covers the whole directory.
/// </summary>
internal sealed class FileInventorySource : IDisposable
{
    private readonly InventoryStore _store;
    private readonly FileInventorySourceOptions _options;
    private readonly string _directory;
    private readonly string _fileName;
    private readonly object _reloadGate = new();
    private readonly Timer _debounce;
    private readonly Timer _poll;
    private FileSystemWatcher? _watcher;
    private FileStamp _lastStamp = FileStamp.Missing;
    private string? _lastAttempt;
    private HashSet<string> _lastWarnings = [];
    private InventoryLoadError? _lastError;
    private InventoryState? _state;
    private bool _disposed;

    private FileInventorySource(string path, InventoryStore store, FileInventorySourceOptions options)
    {
        Path = System.IO.Path.GetFullPath(path);
        _store = store;
        _options = options;
        _directory = System.IO.Path.GetDirectoryName(Path)!;
        _fileName = System.IO.Path.GetFileName(Path);
        _debounce = new Timer(_ => ReloadInBackground(), null, Timeout.Infinite, Timeout.Infinite);
        _poll = new Timer(_ => PollForChange(), null, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>Full path of the inventory file.</summary>
    public string Path { get; }

    /// <summary>Why the most recent reload failed, or null when the file as it is now was loaded.</summary>
    public InventoryLoadError? LastError => Volatile.Read(ref _lastError);

    /// <summary>
    /// Loads the file, publishes the first snapshot and starts watching. A file that cannot be loaded throws
    /// <see cref="InventoryLoadException"/> (message "path:line:column: problem") and nothing keeps running.
    /// </summary>
    public static FileInventorySource Start(string path, InventoryStore store, FileInventorySourceOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(store);
        var source = new FileInventorySource(path, store, options ?? new FileInventorySourceOptions());
        try
        {
            lock (source._reloadGate)
            {
                if (source.TryLoad(firstLoad: true) is { } failure)
                {
                    throw failure;
                }
            }

            source.StartWatching();
            return source;
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads the file now (also what the watcher and the poll end up calling). True when the file is valid:
    /// either a new snapshot was published or the content is what was loaded last.
    /// </summary>
    public bool Reload()
    {
        lock (_reloadGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return TryLoad(firstLoad: false) is null && LastError is null;
        }
    }

    public void Dispose()
    {
        lock (_reloadGate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        _watcher?.Dispose();
        _debounce.Dispose();
        _poll.Dispose();
    }

    /// <summary>One load attempt; returns the failure instead of throwing. Caller holds the gate.</summary>
    private InventoryLoadException? TryLoad(bool firstLoad)
    {
        var stamp = FileStamp.Of(Path);
        byte[] bytes;
        try
        {
            if (stamp.Exists && stamp.Length > _options.MaxFileBytes)
            {
                Volatile.Write(ref _lastStamp, stamp);
                var tooLarge = $"too large: {stamp.Length}";
                if (tooLarge == _lastAttempt)
                {
                    return null;
                }

                _lastAttempt = tooLarge;
                return Fail(new InventoryLoadException(Path, null, null,
                    $"the inventory file has {stamp.Length} bytes, more than the limit of {_options.MaxFileBytes}"), firstLoad);
            }

            bytes = File.ReadAllBytes(Path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Volatile.Write(ref _lastStamp, stamp);

            // Remembered like content, so the same failure is logged once and any readable content afterwards is news.
            var unreadable = $"unreadable: {ex.Message}";
            if (unreadable == _lastAttempt)
            {
                return null;
            }

            _lastAttempt = unreadable;
            return Fail(new InventoryLoadException(Path, null, null, $"cannot read the inventory file: {ex.Message}", ex), firstLoad);
        }

        Volatile.Write(ref _lastStamp, stamp);

        // Change events come in bursts and the poll may see the same save again: identical bytes are not news.
        var attempt = Convert.ToHexString(SHA256.HashData(bytes));
        if (attempt == _lastAttempt)
        {
            return null;
        }

        _lastAttempt = attempt;
        var hasBom = bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble);
        var content = Encoding.UTF8.GetString(bytes.AsSpan(hasBom ? Encoding.UTF8.Preamble.Length : 0));

        InventorySnapshot built;
        try
        {
            var objects = InventoryYaml.Read(content, Path, _options.ExtraKinds);
            if (_options.Loaded is { } loaded)
            {
                // Only a caller that asks for the objects makes the source hold them all at once. A refusal
                // from it leaves the state holding this file; the next file's diff starts from there.
                var all = objects.ToList();
                built = Apply(all);
                loaded(all, built);
            }
            else
            {
                built = Apply(objects);
            }
        }
        catch (InventoryLoadException ex)
        {
            return Fail(ex, firstLoad);
        }
        catch (Exception ex)
        {
            // A builder bug must not leave the source half-updated or silent: report it like a bad file.
            return Fail(new InventoryLoadException(Path, null, null, $"building the inventory failed: {ex.Message}", ex), firstLoad);
        }

        // Rebuilding repeats the same warnings; only new ones are worth a line in the log.
        HashSet<string> warnings = built.WarningCount == 0 ? [] : built.Warnings.ToHashSet(StringComparer.Ordinal);
        foreach (var warning in built.Warnings)
        {
            if (!_lastWarnings.Contains(warning))
            {
                Log.Warn("inventory", $"{Path}: {warning}");
            }
        }

        _lastWarnings = warnings;
        var published = _store.Publish(built);
        var recovered = Interlocked.Exchange(ref _lastError, null) is not null;
        Log.Info("inventory", $"{(recovered ? "reloaded valid" : firstLoad ? "loaded" : "reloaded")} {Path}: version {published.Version}, "
            + $"{published.WorkloadCount} workloads, {published.ServiceCount} services, "
            + $"{published.Policies.AuthorizationPolicies.Length} authorization policies"
            + (built.WarningCount == 0 ? "" : $", {built.WarningCount} objects skipped or partly ignored"));
        return null;
    }

    /// <summary>
    /// The file's objects against the held ones, by kind, namespace/name (and occurrence, for a name given twice)
    /// and content: only the objects that differ are applied, so one changed pod costs the read of the file and
    /// one pod's update of the data path. Nothing is applied until the whole file has been read: a file that
    /// turns out malformed halfway leaves the held state and the last snapshot as they were.
    /// </summary>
    private InventorySnapshot Apply(IEnumerable<IKubernetesObject> objects)
    {
        var state = _state ?? new InventoryState(_options.MeshRootNamespace);
        var fresh = _state is null;
        var ids = new HashSet<(Type, string)>();
        var changed = new List<(string Id, IKubernetesObject Object)>();
        foreach (var obj in objects)
        {
            if (obj is null)
            {
                continue;
            }

            var name = obj is IMetadata<V1ObjectMeta> { Metadata: { } metadata } ? $"{metadata.NamespaceProperty}/{metadata.Name}" : "";
            var id = name;
            for (var occurrence = 1; !ids.Add((obj.GetType(), id)); occurrence++)
            {
                id = $"{name}#{occurrence.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
            }

            if (fresh)
            {
                state.Upsert(id, obj); // a fresh state is thrown away if the file fails: no need to hold the objects
            }
            else if (!state.Holds(id, obj))
            {
                changed.Add((id, obj));
            }
        }

        state.RemoveAllExcept(ids);

        foreach (var (id, obj) in changed)
        {
            state.Upsert(id, obj);
        }

        _state = state;
        return state.Snapshot();
    }

    private InventoryLoadException Fail(InventoryLoadException failure, bool firstLoad)
    {
        Volatile.Write(ref _lastError, new InventoryLoadError(failure.Message, DateTimeOffset.UtcNow, failure.Path, failure.Line, failure.Column));
        if (!firstLoad)
        {
            // The first failure is the caller's to report; later ones only the log and LastError can tell.
            Log.Error("inventory", $"{failure.Message} (keeping inventory version {_store.Current.Version})");
        }

        return failure;
    }

    private void StartWatching()
    {
        try
        {
            var watcher = new FileSystemWatcher(_directory)
            {
                IncludeSubdirectories = false,
                NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.LastWrite
                    | NotifyFilters.Size | NotifyFilters.CreationTime,
            };
            watcher.Changed += OnDirectoryEvent;
            watcher.Created += OnDirectoryEvent;
            watcher.Deleted += OnDirectoryEvent;
            watcher.Renamed += OnDirectoryEvent;
            watcher.Error += (_, e) => Log.Warn("inventory",
                $"watching {_directory} failed ({e.GetException().Message}); changes to {_fileName} are still found every {_options.PollInterval.TotalSeconds:0.#}s");
            watcher.EnableRaisingEvents = true;
            _watcher = watcher;
        }
        catch (Exception ex) when (ex is IOException or ArgumentException or PlatformNotSupportedException)
        {
            // Out of inotify watches, for example: polling alone still finds every change, only later.
            Log.Warn("inventory", $"cannot watch {_directory} ({ex.Message}); checking {_fileName} every {_options.PollInterval.TotalSeconds:0.#}s instead");
        }

        _poll.Change(_options.PollInterval, _options.PollInterval);

        // A save between the first load and the watcher's start would otherwise wait for the poll.
        if (FileStamp.Of(Path) != _lastStamp)
        {
            ScheduleReload();
        }
    }

    private void OnDirectoryEvent(object sender, FileSystemEventArgs e)
    {
        // Our file by name (written in place, created, or renamed over), or a ConfigMap volume's "..data" swap.
        if (IsRelevant(e.Name) || (e is RenamedEventArgs renamed && IsRelevant(renamed.OldName)))
        {
            ScheduleReload();
        }
    }

    private bool IsRelevant(string? name) =>
        name is not null && (name == _fileName || name.StartsWith("..", StringComparison.Ordinal));

    private void ScheduleReload()
    {
        try
        {
            _debounce.Change(_options.Debounce, Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
            // Disposed while an event was in flight.
        }
    }

    private void PollForChange()
    {
        if (FileStamp.Of(Path) != Volatile.Read(ref _lastStamp))
        {
            ScheduleReload();
        }
    }

    private void ReloadInBackground()
    {
        try
        {
            lock (_reloadGate)
            {
                if (!_disposed)
                {
                    TryLoad(firstLoad: false);
                }
            }
        }
        catch (Exception ex)
        {
            // A timer thread must never take the agent down; the last good snapshot stays in place.
            Log.Error("inventory", $"reloading {Path} failed unexpectedly: {ex}");
        }
    }

    /// <summary>A reference type so the poll thread reads it whole. What the poll compares: existence, size and modification time of the file a symlink finally points to.</summary>
    private sealed record FileStamp(bool Exists, long Length, long LastWriteTicks)
    {
        public static readonly FileStamp Missing = new(false, 0, 0);

        public static FileStamp Of(string path)
        {
            try
            {
                var info = new FileInfo(path);
                if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target)
                {
                    info = target;
                }

                return info.Exists ? new FileStamp(true, info.Length, info.LastWriteTimeUtc.Ticks) : Missing;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                return Missing;
            }
        }
    }
}
