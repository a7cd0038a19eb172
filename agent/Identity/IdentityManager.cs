using System.Collections.Concurrent;
using System.Collections.Frozen;

namespace Weft.Identity;

/// <summary>How the agent's identity is set up.</summary>
internal sealed record IdentityOptions(string TrustDomain, CaFiles Files)
{
    public TimeSpan SvidLifetime { get; init; } = SvidIssuer.DefaultLifetime;

    /// <summary>How often CA files are re-checked (besides the file watcher) and due SVIDs renewed in the background.</summary>
    public TimeSpan CheckInterval { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Other trust domains whose identities peers may carry; their roots must be in the trust bundle.</summary>
    public IReadOnlyCollection<string> OtherTrustDomains { get; init; } = [];

    /// <summary>Watch the CA files' folders for changes (the periodic check runs either way).</summary>
    public bool WatchFiles { get; init; } = true;
}

/// <summary>
/// The node's identities: holds the CA, issues X.509-SVIDs only for service accounts the agent says
/// are on this node, caches one per SPIFFE ID, renews each at half life, and follows the CA files.
/// <code>
///   CA files --(watcher + periodic check)--> CertificateAuthority --> SvidIssuer --> cache[SpiffeId] --> Get()
///                                       \--> SpiffeVerifier (trust bundle) --> MeshTls
/// </code>
/// A bad new CA file keeps the previous CA and logs one error. Get never returns an expired SVID.
/// </summary>
internal sealed class IdentityManager : IDisposable
{
    private const string Component = "identity";

    private readonly IdentityOptions _options;
    private readonly TimeProvider _time;
    private readonly SvidIssuer _issuer;
    private readonly ConcurrentDictionary<SpiffeId, Svid> _cache = new();
    private readonly object _issueGate = new();
    private readonly object _reloadGate = new();
    private readonly List<FileSystemWatcher> _watchers = [];
    private readonly ITimer _periodic;
    private readonly Timer _debounce;
    private volatile CertificateAuthority _authority;
    private volatile SpiffeVerifier _verifier;
    private volatile FrozenSet<SpiffeId> _allowed = FrozenSet<SpiffeId>.Empty;
    private string? _lastFailedFingerprint;
    private bool _disposed;

    private IdentityManager(IdentityOptions options, TimeProvider time, CertificateAuthority authority)
    {
        _options = options;
        _time = time;
        _authority = authority;
        _issuer = new SvidIssuer(options.SvidLifetime, time);
        _verifier = NewVerifier(authority);
        Tls = new MeshTls(() => _verifier);
        _debounce = new Timer(_ => Guarded(() => Reload()), null, Timeout.Infinite, Timeout.Infinite);
        if (options.WatchFiles)
        {
            Watch();
        }
        _periodic = time.CreateTimer(_ => Guarded(Tick), null, options.CheckInterval, options.CheckInterval);
    }

    /// <summary>Raised after a new CA was loaded and the cached SVIDs re-issued from it.</summary>
    public event Action<CertificateAuthority>? AuthorityChanged;

    public string TrustDomain => _options.TrustDomain;

    public CertificateAuthority Authority => _authority;

    /// <summary>Checks peers against the current trust bundle; replaced when the bundle changes.</summary>
    public SpiffeVerifier Verifier => _verifier;

    /// <summary>TLS option builders that always use the current trust bundle.</summary>
    public MeshTls Tls { get; }

    /// <summary>Identities this node may hold (service accounts of its pods).</summary>
    public IReadOnlySet<SpiffeId> Allowed => _allowed;

    /// <summary>The SVIDs held now, for an admin view.</summary>
    public IReadOnlyList<Svid> Current => _cache.Values.OrderBy(s => s.Id.ToString(), StringComparer.Ordinal).ToList();

    /// <summary>Loads the CA (throws <see cref="IdentityException"/> with the file and problem when it is unusable) and starts following its files.</summary>
    public static IdentityManager Start(IdentityOptions options, TimeProvider? time = null)
    {
        if (SpiffeId.ValidateTrustDomain(options.TrustDomain) is { } error)
        {
            throw new IdentityException($"trust domain '{options.TrustDomain}': {error}");
        }
        time ??= TimeProvider.System;
        var authority = CertificateAuthority.Load(options.Files, time);
        Log.Info(Component, $"CA {authority.Signer.Subject} (until {authority.Signer.NotAfter.ToUniversalTime():u}), trust bundle of {authority.TrustBundle.Count} root(s), trust domain {options.TrustDomain}");
        return new IdentityManager(options, time, authority);
    }

    /// <summary>Sets the identities this node may hold; SVIDs of identities no longer listed are dropped.</summary>
    public void SetAllowed(IEnumerable<SpiffeId> ids)
    {
        var next = ids.ToFrozenSet();
        _allowed = next;
        foreach (var id in _cache.Keys)
        {
            if (!next.Contains(id))
            {
                _cache.TryRemove(id, out _);
            }
        }
    }

    /// <summary>
    /// The SVID for <paramref name="id"/>: cached, or issued now when missing, past half life, or from an older CA.
    /// Throws <see cref="IdentityException"/> when the identity is not this node's to hold.
    /// </summary>
    public Svid Get(SpiffeId id)
    {
        if (id.TrustDomain != _options.TrustDomain)
        {
            throw new IdentityException($"will not issue {id}: trust domain {id.TrustDomain} is not {_options.TrustDomain}");
        }
        if (!_allowed.Contains(id))
        {
            throw new IdentityException($"will not issue {id}: no pod with service account {id.ServiceAccount} in namespace {id.Namespace} runs on this node");
        }
        var now = _time.GetUtcNow();
        var current = _authority;
        if (_cache.TryGetValue(id, out var svid) && IsFresh(svid, current, now))
        {
            return svid;
        }
        lock (_issueGate)
        {
            current = _authority;
            if (_cache.TryGetValue(id, out svid) && IsFresh(svid, current, now))
            {
                return svid;
            }
            try
            {
                var issued = _issuer.Issue(current, id);
                // SetAllowed may have removed it meanwhile: then hand it out once but do not keep it.
                if (_allowed.Contains(id))
                {
                    _cache[id] = issued;
                }
                return issued;
            }
            catch (Exception e) when (svid is not null && now < svid.NotAfter && e is IdentityException or System.Security.Cryptography.CryptographicException)
            {
                Log.Error(Component, $"renewing {id} failed, keeping the current SVID until {svid.NotAfter:u}: {e.Message}");
                return svid;
            }
        }
    }

    /// <summary>Re-issues every cached SVID that is past half life or from an older CA, so handshakes rarely wait for signing.</summary>
    public void RenewDue()
    {
        var current = _authority;
        var now = _time.GetUtcNow();
        foreach (var (id, svid) in _cache)
        {
            if (!IsFresh(svid, current, now) && _allowed.Contains(id))
            {
                try
                {
                    Get(id);
                }
                catch (IdentityException e)
                {
                    Log.Error(Component, $"renewing {id}: {e.Message}");
                }
            }
        }
    }

    /// <summary>
    /// Reads the CA files now; returns true when a new CA was loaded. An unusable file set keeps the current CA
    /// and logs one error (once per distinct content).
    /// </summary>
    public bool Reload()
    {
        lock (_reloadGate)
        {
            var fingerprint = CertificateAuthority.FingerprintOf(_options.Files);
            if (fingerprint == _authority.Fingerprint || (fingerprint is not null && fingerprint == _lastFailedFingerprint))
            {
                return false;
            }
            CertificateAuthority next;
            try
            {
                next = CertificateAuthority.Load(_options.Files, _time);
            }
            catch (IdentityException e)
            {
                var key = fingerprint ?? "missing:" + e.Message;
                if (key != _lastFailedFingerprint)
                {
                    Log.Error(Component, $"new CA files not used, keeping CA {_authority.Signer.Subject}: {e.Message}");
                    _lastFailedFingerprint = key;
                }
                return false;
            }
            if (next.Fingerprint == _authority.Fingerprint)
            {
                return false;
            }
            _lastFailedFingerprint = null;
            _authority = next;
            _verifier = NewVerifier(next);
            var reissued = 0;
            foreach (var id in _cache.Keys)
            {
                try
                {
                    Get(id);
                    reissued++;
                }
                catch (IdentityException e)
                {
                    Log.Error(Component, $"re-issuing {id} from the new CA: {e.Message}");
                }
            }
            Log.Info(Component, $"CA reloaded: {next.Signer.Subject} (until {next.Signer.NotAfter.ToUniversalTime():u}), trust bundle of {next.TrustBundle.Count} root(s); re-issued {reissued} SVID(s)");
            AuthorityChanged?.Invoke(next);
            return true;
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
        foreach (var watcher in _watchers)
        {
            watcher.Dispose();
        }
        _periodic.Dispose();
        _debounce.Dispose();
    }

    private static bool IsFresh(Svid svid, CertificateAuthority current, DateTimeOffset now) =>
        svid.AuthorityFingerprint == current.Fingerprint && now < svid.RenewAt && now < svid.NotAfter;

    private SpiffeVerifier NewVerifier(CertificateAuthority ca) =>
        new(_options.TrustDomain, ca.TrustBundle, _options.OtherTrustDomains, _time);

    private void Tick()
    {
        Reload();
        RenewDue();
    }

    /// <summary>
    /// Watches each folder holding a CA file, not the files: a Kubernetes Secret volume swaps a "..data"
    /// symlink, and editors replace files by rename. Any event re-checks after a short quiet period,
    /// so a cert and key written one after the other are read together.
    /// </summary>
    private void Watch()
    {
        foreach (var folder in _options.Files.All().Select(p => Path.GetDirectoryName(Path.GetFullPath(p))!).Distinct())
        {
            try
            {
                var watcher = new FileSystemWatcher(folder)
                {
                    NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.LastWrite | NotifyFilters.Size | NotifyFilters.CreationTime,
                    IncludeSubdirectories = false,
                };
                FileSystemEventHandler changed = (_, _) => Poke();
                watcher.Changed += changed;
                watcher.Created += changed;
                watcher.Deleted += changed;
                watcher.Renamed += (_, _) => Poke();
                watcher.Error += (_, e) => Log.Warn(Component, $"watching {folder}: {e.GetException().Message}; the periodic check still runs");
                watcher.EnableRaisingEvents = true;
                _watchers.Add(watcher);
            }
            catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
            {
                Log.Warn(Component, $"cannot watch {folder} ({e.Message}); CA changes are picked up by the periodic check every {_options.CheckInterval.TotalSeconds:0}s");
            }
        }
    }

    private void Poke()
    {
        try
        {
            _debounce.Change(TimeSpan.FromMilliseconds(250), Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void Guarded(Action action)
    {
        if (_disposed)
        {
            return;
        }
        try
        {
            action();
        }
        catch (Exception e)
        {
            Log.Error(Component, $"background CA check failed: {e.GetType().Name}: {e.Message}");
        }
    }
}
