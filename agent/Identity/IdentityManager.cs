using System.Collections.Concurrent;
using System.Collections.Frozen;

namespace Weft.Identity;

/// <summary>
/// How the agent's identity is set up: either it signs with a CA whose key it holds (<paramref name="Files"/>),
/// or it asks a certificate source (<paramref name="CaService"/>, the CA service) and holds only the trust bundle and its
/// node credential. The manager disposes the source.
/// </summary>
internal sealed record IdentityOptions(string TrustDomain, CaFiles? Files, ICertificateSource? CaService = null)
{
    /// <summary>PEM roots peers' certificates must chain to when the CA service signs (with <see cref="Files"/> it is <see cref="CaFiles.TrustBundlePath"/>).</summary>
    public string? TrustBundlePath { get; init; }

    /// <summary>
    /// How long a connection waits for its pod's first certificate from the CA service before it fails. A pod that
    /// holds a certificate never waits: renewal runs in the background.
    /// </summary>
    public TimeSpan IssuanceWait { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan SvidLifetime { get; init; } = SvidIssuer.DefaultLifetime;

    /// <summary>How often CA files are re-checked (besides the file watcher) and due SVIDs renewed in the background.</summary>
    public TimeSpan CheckInterval { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Other trust domains whose identities peers may carry; their roots must be in the trust bundle.</summary>
    public IReadOnlyCollection<string> OtherTrustDomains { get; init; } = [];

    /// <summary>
    /// With the CA service: the root the CA signs with now, as it publishes it beside the bundle (<c>signing-root.pem</c>).
    /// A held certificate that chains to another root is renewed early, so the old root can be retired.
    /// </summary>
    public string? SigningRootPath { get; init; }

    /// <summary>Watch the CA files' folders for changes (the periodic check runs either way).</summary>
    public bool WatchFiles { get; init; } = true;
}

/// <summary>
/// The node's identities: issues X.509-SVIDs only for service accounts the agent says are on this node, caches one
/// per SPIFFE ID, renews each at half life, and follows the trust files. Two ways to get an SVID:
/// <code>
///   local signing:  CA files --(watcher + periodic check)--> CertificateAuthority --> SvidIssuer --> cache[SpiffeId]
///   CA service:     trust bundle + node credential --> CaServiceClient (CSR, key kept here) --> cache[SpiffeId]
///                   one acquisition per identity at a time, shared by every waiting connection; retried with
///                   jittered exponential backoff until it succeeds, the identity leaves the node, or the agent stops
/// </code>
/// A bad new CA file keeps the previous CA and logs one error. Get never returns an expired SVID. With the CA service,
/// a held SVID is served while renewal is retried; a pod with none waits at most <see cref="IdentityOptions.IssuanceWait"/>.
/// </summary>
internal sealed class IdentityManager : IDisposable
{
    private const string Component = "identity";

    private readonly IdentityOptions _options;
    private readonly TimeProvider _time;
    private readonly SvidIssuer _issuer;
    private readonly ICertificateSource? _caService;
    private readonly ConcurrentDictionary<SpiffeId, Svid> _cache = new();
    private readonly ConcurrentDictionary<SpiffeId, Task<Svid>> _acquiring = new();
    private readonly ConcurrentDictionary<SpiffeId, string> _lastFailure = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly object _issueGate = new();
    private readonly object _reloadGate = new();
    private readonly List<FileSystemWatcher> _watchers = [];
    private readonly ITimer _periodic;
    private readonly Timer _debounce;
    private volatile CertificateAuthority? _authority;
    private volatile SpiffeVerifier _verifier;
    private volatile FrozenSet<SpiffeId> _allowed = FrozenSet<SpiffeId>.Empty;
    private string? _bundleFingerprint;
    private volatile string? _signingRoot;
    private string? _signingRootFailure;
    private readonly TimeSpan _renewalCheck;
    private string? _lastFailedFingerprint;
    private long _caRequestsOk;
    private long _caRequestsFailed;
    private long _renewals;
    private bool _disposed;

    private IdentityManager(IdentityOptions options, TimeProvider time, CertificateAuthority? authority, TrustBundle? bundle)
    {
        _options = options;
        _time = time;
        _authority = authority;
        _bundleFingerprint = bundle?.Fingerprint;
        _issuer = new SvidIssuer(options.SvidLifetime, time);
        _verifier = NewVerifier(authority?.TrustBundle ?? bundle!.Roots);
        Tls = new MeshTls(() => _verifier);
        _caService = options.CaService;
        _debounce = new Timer(_ => Guarded(() => Reload()), null, Timeout.Infinite, Timeout.Infinite);
        if (options.WatchFiles)
        {
            Watch();
        }

        // With the CA service, renewal is a network call that may need retries: check often enough that a short
        // lifetime is renewed near its half life, not a whole check interval late.
        var interval = _caService is null ? options.CheckInterval : Min(options.CheckInterval, Max(TimeSpan.FromSeconds(1), options.SvidLifetime / 20));
        _renewalCheck = interval;
        _periodic = time.CreateTimer(_ => Guarded(Tick), null, interval, interval);
    }

    /// <summary>Raised after a new CA was loaded and the cached SVIDs re-issued from it (local signing only).</summary>
    public event Action<CertificateAuthority>? AuthorityChanged;

    public string TrustDomain => _options.TrustDomain;

    /// <summary>True when this node signs its workloads' certificates itself (it holds a CA key).</summary>
    public bool SignsLocally => _authority is not null;

    /// <summary>The CA this node signs with; only when <see cref="SignsLocally"/>.</summary>
    public CertificateAuthority Authority => _authority ?? throw new InvalidOperationException("this node holds no CA: its certificates come from the CA service");

    /// <summary>Checks peers against the current trust bundle; replaced when the bundle changes.</summary>
    public SpiffeVerifier Verifier => _verifier;

    /// <summary>TLS option builders that always use the current trust bundle.</summary>
    public MeshTls Tls { get; }

    /// <summary>Identities this node may hold (service accounts of its pods).</summary>
    public IReadOnlySet<SpiffeId> Allowed => _allowed;

    /// <summary>The SVIDs held now, for an admin view.</summary>
    public IReadOnlyList<Svid> Current => _cache.Values.OrderBy(s => s.Id.ToString(), StringComparer.Ordinal).ToList();

    /// <summary>CreateCertificate calls to the CA service that returned a usable certificate.</summary>
    public long CaRequestsOk => Interlocked.Read(ref _caRequestsOk);

    /// <summary>CreateCertificate calls that failed (unreachable, refused, or an unusable answer).</summary>
    public long CaRequestsFailed => Interlocked.Read(ref _caRequestsFailed);

    /// <summary>
    /// Held certificates that do not chain to the CA's published signing root (0 without one): during a root rotation,
    /// those still to be renewed; 0 on every node means the old root may be retired.
    /// </summary>
    public int CertificatesFromOtherRoots => _signingRoot is { } root ? _cache.Values.Count(s => s.RootThumbprint != root) : 0;

    /// <summary>The thumbprint of the CA's published signing root, when one is followed.</summary>
    public string? SigningRoot => _signingRoot;

    /// <summary>Held SVIDs replaced by a new one from the CA service.</summary>
    public long Renewals => Interlocked.Read(ref _renewals);

    /// <summary>Loads the CA or the trust bundle (throws <see cref="IdentityException"/> with the file and problem when unusable) and starts following the files.</summary>
    public static IdentityManager Start(IdentityOptions options, TimeProvider? time = null)
    {
        if (SpiffeId.ValidateTrustDomain(options.TrustDomain) is { } error)
        {
            throw new IdentityException($"trust domain '{options.TrustDomain}': {error}");
        }

        time ??= TimeProvider.System;
        if ((options.Files is null) == (options.CaService is null))
        {
            throw new IdentityException("give either a CA to sign with (CA certificate and key) or a CA service to ask, not both or neither");
        }

        if (options.Files is { } files)
        {
            var authority = CertificateAuthority.Load(files, time);
            Log.Info(Component, $"CA {authority.Signer.Subject} (until {authority.Signer.NotAfter.ToUniversalTime():u}), trust bundle of {authority.TrustBundle.Count} root(s), trust domain {options.TrustDomain}");
            return new IdentityManager(options, time, authority, null);
        }

        TrustBundle bundle;
        try
        {
            bundle = TrustBundle.Load(options.TrustBundlePath ?? throw new IdentityException("a CA service needs a trust bundle (PEM roots) to check it and the mesh's peers"));
        }
        catch
        {
            options.CaService!.Dispose();
            throw;
        }

        var manager = new IdentityManager(options, time, null, bundle);
        manager.ReloadSigningRoot(bundle.Roots);
        Log.Info(Component, $"certificates from {options.CaService!.Description}, trust bundle of {bundle.Roots.Count} root(s), trust domain {options.TrustDomain}; no CA key on this node");
        return manager;
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

        // The first pod of a service account starts its certificate's issuance, so its first connection rarely waits.
        if (_caService is not null)
        {
            foreach (var id in next)
            {
                if (!_cache.ContainsKey(id))
                {
                    Acquire(id);
                }
            }
        }
    }

    /// <summary>
    /// The SVID for <paramref name="id"/>: cached, or issued now when missing, past half life, or from an older CA.
    /// Throws <see cref="IdentityException"/> when the identity is not this node's to hold. With the CA service this
    /// never waits: it returns a held, unexpired SVID (starting its renewal when due) or throws.
    /// </summary>
    public Svid Get(SpiffeId id)
    {
        CheckHoldable(id);
        var now = _time.GetUtcNow();
        if (_cache.TryGetValue(id, out var svid) && IsFresh(svid, now))
        {
            return svid;
        }

        if (_caService is not null)
        {
            Acquire(id);
            return svid is not null && now < svid.NotAfter ? svid : throw Unavailable(id);
        }

        lock (_issueGate)
        {
            var current = Authority;
            if (_cache.TryGetValue(id, out svid) && IsFresh(svid, now))
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

    /// <summary>
    /// The SVID for <paramref name="id"/>, for a connection about to handshake. A held, unexpired SVID comes back at
    /// once (renewal, when due, runs in the background). Without one, the connection joins the identity's pending
    /// issuance and waits at most <see cref="IdentityOptions.IssuanceWait"/>, then gets an <see cref="IdentityException"/>
    /// with <see cref="IdentityException.CertificateUnavailable"/> set.
    /// </summary>
    public ValueTask<Svid> GetAsync(SpiffeId id, CancellationToken cancellationToken = default)
    {
        CheckHoldable(id);
        var now = _time.GetUtcNow();
        if (_cache.TryGetValue(id, out var svid) && IsFresh(svid, now))
        {
            return ValueTask.FromResult(svid);
        }

        if (_caService is null)
        {
            return ValueTask.FromResult(Get(id));
        }

        var acquiring = Acquire(id);
        if (svid is not null && now < svid.NotAfter)
        {
            return ValueTask.FromResult(svid);
        }

        return WaitAsync(id, acquiring, cancellationToken);
    }

    /// <summary>Renews every cached SVID that is past half life or from an older CA, so handshakes rarely wait for signing.</summary>
    public void RenewDue()
    {
        var now = _time.GetUtcNow();
        foreach (var (id, svid) in _cache)
        {
            if (!IsFresh(svid, now) && _allowed.Contains(id))
            {
                if (_caService is not null)
                {
                    Acquire(id);
                    continue;
                }

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
    /// Reads the CA files (or, with the CA service, the trust bundle) now; returns true when something new was loaded.
    /// An unusable file set keeps the current one and logs one error (once per distinct content).
    /// </summary>
    public bool Reload()
    {
        lock (_reloadGate)
        {
            return _authority is { } authority ? ReloadAuthority(authority, _options.Files!) : ReloadBundle();
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

        _stop.Cancel();
        foreach (var watcher in _watchers)
        {
            watcher.Dispose();
        }

        _periodic.Dispose();
        _debounce.Dispose();
        _caService?.Dispose();
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private void CheckHoldable(SpiffeId id)
    {
        if (id.TrustDomain != _options.TrustDomain)
        {
            throw new IdentityException($"will not issue {id}: trust domain {id.TrustDomain} is not {_options.TrustDomain}");
        }

        if (!_allowed.Contains(id))
        {
            throw new IdentityException($"will not issue {id}: no pod with service account {id.ServiceAccount} in namespace {id.Namespace} runs on this node");
        }
    }

    private bool IsFresh(Svid svid, DateTimeOffset now) =>
        svid.AuthorityFingerprint == (_authority?.Fingerprint ?? ICertificateSource.Fingerprint) && now < svid.RenewAt && now < svid.NotAfter && !AwaitsNewRoot(svid, now);

    /// <summary>
    /// A certificate from a root the CA no longer signs with is due, but at most once per renewal check: a CA
    /// replica that has not switched yet answers with the old root, and that must not become a loop.
    /// </summary>
    private bool AwaitsNewRoot(Svid svid, DateTimeOffset now) =>
        _signingRoot is { } root && svid.RootThumbprint != root && now - svid.IssuedAt >= _renewalCheck;

    private IdentityException Unavailable(SpiffeId id) =>
        new($"no certificate for {id} yet: {_caService!.Description} has not issued one within {_options.IssuanceWait.TotalSeconds:0.#}s" +
            (_lastFailure.TryGetValue(id, out var why) ? $" (last attempt: {why})" : ""))
        { CertificateUnavailable = true };

    private async ValueTask<Svid> WaitAsync(SpiffeId id, Task<Svid> acquiring, CancellationToken cancellationToken)
    {
        try
        {
            return await acquiring.WaitAsync(_options.IssuanceWait, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw Unavailable(id);
        }
    }

    /// <summary>The identity's pending issuance from the CA service; starts one when none is running.</summary>
    private Task<Svid> Acquire(SpiffeId id)
    {
        while (true)
        {
            if (_acquiring.TryGetValue(id, out var running))
            {
                return running;
            }

            var done = new TaskCompletionSource<Svid>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (_acquiring.TryAdd(id, done.Task))
            {
                _ = Task.Run(() => AcquireAsync(id, done));
                return done.Task;
            }
        }
    }

    /// <summary>Asks the CA service until it answers; the pending task leaves the map before it completes, so a later caller starts afresh.</summary>
    private async Task AcquireAsync(SpiffeId id, TaskCompletionSource<Svid> done)
    {
        var failures = 0;
        try
        {
            while (true)
            {
                _stop.Token.ThrowIfCancellationRequested();
                if (!_allowed.Contains(id))
                {
                    throw new IdentityException($"{id} is no longer held on this node: its last pod left");
                }

                var held = _cache.TryGetValue(id, out var h) ? h : null;
                Svid issued;
                try
                {
                    issued = await _caService!.RequestAsync(id, _options.SvidLifetime, _verifier, _time, _stop.Token).ConfigureAwait(false);
                }
                catch (IdentityException e)
                {
                    Interlocked.Increment(ref _caRequestsFailed);
                    _lastFailure[id] = e.Message;
                    failures++;
                    var holding = held is not null && _time.GetUtcNow() < held.NotAfter;
                    var delay = Backoff(failures, holding);
                    // The first failure and then each doubling: a long outage does not flood the log.
                    if ((failures & (failures - 1)) == 0)
                    {
                        var keeping = holding ? $"; serving with the held certificate until {held!.NotAfter:u}" : "";
                        Log.Warn(Component, $"{(held is null ? "obtaining" : "renewing")} {id} failed ({failures} attempt(s)), retrying in {delay.TotalSeconds:0.#}s{keeping}: {e.Message}");
                    }

                    await Task.Delay(delay, _time, _stop.Token).ConfigureAwait(false);
                    continue;
                }

                Interlocked.Increment(ref _caRequestsOk);
                if (held is not null)
                {
                    Interlocked.Increment(ref _renewals);
                }

                _lastFailure.TryRemove(id, out _);
                if (_allowed.Contains(id))
                {
                    _cache[id] = issued;
                }

                Log.Info(Component, $"{(held is null ? "obtained" : "renewed")} {issued} from {_caService.Description}{(failures > 0 ? $" after {failures} failed attempt(s)" : "")}");
                _acquiring.TryRemove(new(id, done.Task));
                done.TrySetResult(issued);
                return;
            }
        }
        catch (Exception e)
        {
            _acquiring.TryRemove(new(id, done.Task));
            done.TrySetException(e is OperationCanceledException ? new IdentityException($"no certificate for {id}: the agent is stopping") : e);
        }
    }

    /// <summary>
    /// Exponential from 1 s, capped at a tenth of the SVID lifetime (between 1 s and 5 min) so a returning CA is
    /// used well before a held certificate expires; each delay drawn from its upper half so nodes do not retry in step.
    /// An identity with no usable certificate retries at least every half issuance wait, so each waiting connection
    /// sees an attempt and a returning CA serves a new pod at its next connection.
    /// </summary>
    private TimeSpan Backoff(int failures, bool holding)
    {
        var cap = Min(TimeSpan.FromMinutes(5), Max(TimeSpan.FromSeconds(1), _options.SvidLifetime / 10));
        if (!holding)
        {
            cap = Min(cap, Max(TimeSpan.FromSeconds(1), _options.IssuanceWait / 2));
        }

        var exponential = TimeSpan.FromSeconds(Math.Pow(2, Math.Min(failures - 1, 20)));
        var delay = Min(cap, exponential);
        return delay * (0.5 + (Random.Shared.NextDouble() * 0.5));
    }

    private bool ReloadAuthority(CertificateAuthority authority, CaFiles files)
    {
        var fingerprint = CertificateAuthority.FingerprintOf(files);
        if (fingerprint == authority.Fingerprint || (fingerprint is not null && fingerprint == _lastFailedFingerprint))
        {
            return false;
        }

        CertificateAuthority next;
        try
        {
            next = CertificateAuthority.Load(files, _time);
        }
        catch (IdentityException e)
        {
            var key = fingerprint ?? "missing:" + e.Message;
            if (key != _lastFailedFingerprint)
            {
                Log.Error(Component, $"new CA files not used, keeping CA {authority.Signer.Subject}: {e.Message}");
                _lastFailedFingerprint = key;
            }

            return false;
        }

        if (next.Fingerprint == authority.Fingerprint)
        {
            return false;
        }

        _lastFailedFingerprint = null;
        _authority = next;
        _verifier = NewVerifier(next.TrustBundle);
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

    /// <summary>With the CA service only the trust bundle is followed: new roots apply to the next handshake.</summary>
    private bool ReloadBundle()
    {
        TrustBundle bundle;
        try
        {
            bundle = TrustBundle.Load(_options.TrustBundlePath!);
        }
        catch (IdentityException e)
        {
            if (e.Message != _lastFailedFingerprint)
            {
                Log.Error(Component, $"new trust bundle not used, keeping the current one: {e.Message}");
                _lastFailedFingerprint = e.Message;
            }

            return false;
        }

        if (bundle.Fingerprint != _bundleFingerprint)
        {
            _lastFailedFingerprint = null;
            _bundleFingerprint = bundle.Fingerprint;
            _verifier = NewVerifier(bundle.Roots);
            Log.Info(Component, $"trust bundle reloaded: {bundle.Roots.Count} root(s): {string.Join(", ", bundle.Roots.Select(r => r.Thumbprint))}");
            ReloadSigningRoot(bundle.Roots);
            return true;
        }

        return ReloadSigningRoot(bundle.Roots);
    }

    /// <summary>Reads the published signing root; when it changed, renews at once what chains to another root.</summary>
    private bool ReloadSigningRoot(System.Security.Cryptography.X509Certificates.X509Certificate2Collection roots)
    {
        if (_options.SigningRootPath is not { } path)
        {
            return false;
        }

        string root;
        try
        {
            root = TrustBundle.LoadSigningRoot(path, roots);
        }
        catch (IdentityException e)
        {
            if (e.Message != _signingRootFailure)
            {
                Log.Error(Component, $"signing root not used{(_signingRoot is null ? "" : $", keeping {_signingRoot}")}: {e.Message}");
                _signingRootFailure = e.Message;
            }

            return false;
        }

        _signingRootFailure = null;
        if (root == _signingRoot)
        {
            return false;
        }

        var previous = _signingRoot;
        _signingRoot = root;
        var stale = _cache.Values.Count(s => s.RootThumbprint != root);
        Log.Info(Component, $"the CA signs with root {root}{(previous is null ? "" : $" (was {previous})")}; {stale} held certificate(s) chain to another root and are renewed now");
        if (previous is not null)
        {
            // Renew now rather than at the next check: these are the certificates the rotation waits for.
            foreach (var (id, svid) in _cache)
            {
                if (svid.RootThumbprint != root && _allowed.Contains(id))
                {
                    Acquire(id);
                }
            }
        }

        return true;
    }

    private SpiffeVerifier NewVerifier(System.Security.Cryptography.X509Certificates.X509Certificate2Collection roots) =>
        new(_options.TrustDomain, roots, _options.OtherTrustDomains, _time);

    private void Tick()
    {
        Reload();
        RenewDue();
    }

    /// <summary>
    /// Watches each folder holding a trust file, not the files: a Kubernetes Secret volume swaps a "..data"
    /// symlink, and editors replace files by rename. Any event re-checks after a short quiet period,
    /// so a cert and key written one after the other are read together.
    /// </summary>
    private void Watch()
    {
        var files = _options.Files?.All() ?? [_options.TrustBundlePath!, .. _options.SigningRootPath is { } signing ? [signing] : Array.Empty<string>()];
        foreach (var folder in files.Select(p => Path.GetDirectoryName(Path.GetFullPath(p))!).Distinct())
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
