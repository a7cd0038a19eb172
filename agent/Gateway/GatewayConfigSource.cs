using Weft.Inventory;

namespace Weft.Gateway;

/// <summary>
/// The standalone gateway's configuration: the inventory file (Services, EndpointSlices, pods as for the agent,
/// plus the routing kinds and TLS Secrets), read by <see cref="FileInventorySource"/> and compiled by
/// <see cref="RouteCompiler"/> on every valid version. A file that cannot be read or compiled leaves the last
/// good <see cref="Current"/> in place; <see cref="LastError"/> says why.
/// </summary>
internal sealed class GatewayConfigSource : IDisposable
{
    private readonly FileInventorySource _file;
    private readonly GatewayMetrics _metrics;
    private RouteTable _current = RouteTable.Empty;
    private long _version;
    private HashSet<string> _lastWarnings = [];
    private readonly IReadOnlyCollection<string> _ownAddresses;

    private GatewayConfigSource(string path, GatewayMetrics metrics, TimeSpan? pollInterval, IReadOnlyCollection<string>? ownAddresses)
    {
        _metrics = metrics;
        _ownAddresses = ownAddresses ?? [];
        var options = new FileInventorySourceOptions
        {
            ExtraKinds = GatewayApiKinds.All,
            Loaded = Compile,
        };
        if (pollInterval is { } poll)
        {
            options = options with { PollInterval = poll };
        }

        Store = new InventoryStore();
        _file = FileInventorySource.Start(path, Store, options);
    }

    public InventoryStore Store { get; }

    /// <summary>The routes served now; read once per request.</summary>
    public RouteTable Current => Volatile.Read(ref _current);

    public InventoryLoadError? LastError => _file.LastError;

    /// <summary>Raised after a new route table is in place.</summary>
    public event Action<RouteTable>? Changed;

    /// <summary>Loads the file (throws <see cref="InventoryLoadException"/> when it cannot be used) and watches it.</summary>
    /// <param name="ownAddresses">The Gateways ("namespace/name") served on addresses of their own: one the file lacks is warned about.</param>
    public static GatewayConfigSource Start(string path, GatewayMetrics metrics, TimeSpan? pollInterval = null, IReadOnlyCollection<string>? ownAddresses = null) =>
        new(path, metrics, pollInterval, ownAddresses);

    /// <summary>Reads the file now; true when it is valid.</summary>
    public bool Reload() => _file.Reload();

    public void Dispose() => _file.Dispose();

    private void Compile(IReadOnlyList<k8s.IKubernetesObject> objects, InventorySnapshot snapshot)
    {
        RouteTable table;
        try
        {
            table = RouteCompiler.Compile(objects, snapshot);
        }
        catch (Exception ex) when (ex is not InventoryLoadException)
        {
            throw new InventoryLoadException(_file?.Path ?? "inventory", null, null, $"compiling the routes failed: {ex.Message}", ex);
        }

        table = table.Versioned(Interlocked.Increment(ref _version), [.. table.Warnings, .. table.UnknownGateways(_ownAddresses)]);
        var warnings = table.Warnings.ToHashSet(StringComparer.Ordinal);
        foreach (var warning in table.Warnings.Where(w => !_lastWarnings.Contains(w)))
        {
            Log.Warn("gateway", warning);
        }

        _lastWarnings = warnings;
        Volatile.Write(ref _current, table);
        _metrics.RoutesServed(table);
        Log.Info("gateway", $"routes version {table.Version}: {table.Http.Hosts.Sum(h => h.Routes.Length)} http, {table.Https.Hosts.Sum(h => h.Routes.Length)} https, {table.Certificates.Count} certificates"
            + (table.Warnings.IsEmpty ? "" : $", {table.Warnings.Length} warnings"));
        Changed?.Invoke(table);
    }
}
