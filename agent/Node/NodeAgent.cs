using System.Net;
using Weft.Admin;
using Weft.Capture;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;
using Weft.Telemetry;

namespace Weft.Node;

/// <summary>
/// One node's agent: keeps the BPF capture and the in-pod listeners in step with the inventory.
/// <code>
///   inventory (file, hot-reloaded; or Kubernetes watches) ──► snapshot ──reconcile──► per local enrolled pod:
///        listeners in its netns (15001, 15006, 15008 with a CA) → sk_lookup link → enrolled map entry
/// </code>
/// Stopping never detaches the BPF programs: enrolled pods keep failing closed until a new agent
/// adopts the pins, or an explicit uninstall removes them.
/// </summary>
internal sealed class NodeAgent : IAsyncDisposable
{
    private readonly AgentOptions _options;
    private readonly Dictionary<string, PodProxy> _pods = new();
    private readonly SemaphoreSlim _reconcileGate = new(1, 1);
    private readonly LocalNetns _localNetns;
    private readonly Timer _netnsRetry;
    private int _netnsRetries;
    private HashSet<string> _withoutNetns = [];
    private BpfCapture? _capture;
    private InventoryStore? _store;
    private IDisposable? _source;
    private ConnectionTracker? _tracker;
    private IdentityManager? _identity;
    private ProxyServices? _services;
    private InboundAdmission? _admission;
    private HeapTrim? _heapTrim;
    private long _descriptorLimit;
    private AdminServer? _admin;
    private HealthServer? _health;
    private MetricsEndpoint? _metricsEndpoint;
    private readonly CancellationTokenSource _stopping = new();
    private readonly object _hostEndpointGate = new();

    /// <summary>The agent process's own network namespace (its main thread's, which never enters a pod's).</summary>
    private const string AgentNamespace = "/proc/self/ns/net";

    public NodeAgent(AgentOptions options)
    {
        _options = options;
        _localNetns = options.Kubernetes is { } api ? LocalNetns.FromCgroups(api.PodCgroupRoot) : LocalNetns.FromInventoryFile();
        _netnsRetry = new Timer(_ => _ = ReconcileAsync(), null, Timeout.Infinite, Timeout.Infinite);
        // The access log owns stdout (the agent's own log goes to stderr): a buffered writer the log's
        // task flushes once per burst, where Console.Out would flush on every line.
        Flows = new FlowTable(accessLog: options.AccessLog ? new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = false } : null,
            format: options.AccessLogFormat);
        Metrics = new MeshMetrics(Flows, () => _store?.Current) { Health = Health };
        if (options.MetricsAddress is null)
        {
            // --metrics off: nothing reads the counters, so closing connections does not feed them either
            Flows.Observer = null;
        }
    }

    public string NodeName => _options.NodeName;

    public FlowTable Flows { get; }

    public MeshMetrics Metrics { get; }

    public IdentityManager? Identity => _identity;

    public InventoryStore Inventory => _store ?? throw new InvalidOperationException("agent not started");

    /// <summary>The Kubernetes watches in --kubernetes mode (readiness: <see cref="KubernetesInventorySource.Ready"/>), else null.</summary>
    public KubernetesInventorySource? KubernetesSource { get; private set; }

    /// <summary>For /ready: a file inventory is loaded at start; a Kubernetes one after the first full sync.</summary>
    public bool InventoryReady => _store is not null && (KubernetesSource?.Ready ?? true);

    public IReadOnlyCollection<string> EnrolledPods
    {
        get
        {
            lock (_pods)
            {
                return _pods.Keys.ToList();
            }
        }
    }

    public async Task StartAsync()
    {
        await StartSocketEngineHereAsync().ConfigureAwait(false);
        _admission = StartAdmission();
        var admission = _admission;
        // Inbound connections and streams being admitted, or proxied connections either way: whichever is larger.
        // Tunnels: the outbound pool's and those other nodes' agents opened to this node's pods.
        _heapTrim = new HeapTrim(() => Math.Max(admission.NodeCount, Flows.LiveCount), TimeSpan.FromSeconds(1),
            tunnels: () => (_services?.Tunnels?.OpenTunnels ?? 0) + (_services?.AcceptedTunnels ?? 0));
        var cgroup = _options.CgroupPath ?? CgroupMount.FindV2();
        _store = new InventoryStore();

        // After a crash the pods fail closed until this start ends: load the inventory (its YAML and
        // Kubernetes model setup is the slowest step) and the CA while libbpf loads the programs.
        var store = _store;
        var sourceStarting = Task.Run(() => _options.Kubernetes is { } api
            ? KubernetesSource = KubernetesInventorySource.Start(api, store, new KubernetesInventoryOptions { NodeName = _options.NodeName })
            : (IDisposable)FileInventorySource.Start(_options.InventoryPath ?? throw new ArgumentException("no inventory: give an inventory file or Kubernetes mode"), store));
        var identityStarting = Task.Run(() => _options.Identity is null ? null : IdentityManager.Start(_options.Identity));
        try
        {
            _capture = BpfCapture.Open(new CaptureOptions(_options.PinRoot, cgroup, _options.Proxy.OutboundPort,
                _options.Proxy.InboundPort, HbonePool.TunnelPort));
        }
        finally
        {
            // on failure too: nothing started may outlive a start that throws
            try
            {
                _identity = await identityStarting.ConfigureAwait(false);
            }
            finally
            {
                _source = await sourceStarting.ConfigureAwait(false);
            }
        }

        _tracker = new ConnectionTracker(Flows, _options.Proxy.IdleTimeout);
        var selfTarget = new SelfTarget(_options.Proxy with { HostPorts = HostPorts() }, SelfTarget.InterfaceAddresses());
        _services = new ProxyServices(_capture, _store, _tracker, _options.Proxy, _identity, selfTarget, _admission);
        _store.Changed += OnInventoryChanged;
        await ReconcileAsync().ConfigureAwait(false);
        if (_options.AdminAddress is not null)
        {
            StartHostEndpoint("admin API", _options.AdminAddress, () => new AdminServer(_options.AdminAddress, new NodeAgentView(this)), s => s.Start(), s => _admin = s);
        }

        if (_options.MetricsAddress is not null)
        {
            StartHostEndpoint("metrics", _options.MetricsAddress, () => new MetricsEndpoint(_options.MetricsAddress, Metrics), s => s.Start(), s => _metricsEndpoint = s);
        }

        if (_options.HealthAddress is not null)
        {
            StartHostEndpoint("health", _options.HealthAddress, () => new HealthServer(_options.HealthAddress, () => InventoryReady), s => s.Start(), s => _health = s);
        }

        var security = _identity is null ? "no CA configured: forwarding in plaintext" : $"mTLS with trust domain {_identity.TrustDomain}";
        Log.Info("agent", $"node {_options.NodeName}: capturing cgroup {cgroup}, pins in {_options.PinRoot}, {EnrolledPods.Count} pod(s) enrolled, {security}");
    }

    /// <summary>
    /// The ports the admin, metrics and health endpoints listen on as configured, plus their defaults:
    /// an endpoint turned off on one node may be on at the same port on another.
    /// </summary>
    private List<(int Port, string What)> HostPorts()
    {
        var ports = new List<(int, string)>(_options.Proxy.HostPorts);
        Add(_options.AdminAddress, "admin API");
        Add(_options.MetricsAddress, "metrics endpoint");
        Add(_options.HealthAddress, "health endpoint");
        return ports;

        void Add(string? address, string what)
        {
            var colon = address?.LastIndexOf(':') ?? -1;
            if (colon >= 0 && int.TryParse(address.AsSpan(colon + 1), out var port))
            {
                ports.Add((port, what));
            }
        }
    }

    /// <summary>
    /// Takes every descriptor the kernel allows (soft limit to hard) and sizes the inbound limits from
    /// it, unless flags set them: inbound work is refused before the process runs out of descriptors.
    /// </summary>
    private InboundAdmission StartAdmission()
    {
        var (soft, hard) = DescriptorLimit.RaiseToHard();
        _descriptorLimit = soft;
        var derived = InboundLimits.FromDescriptorLimit(soft);
        var limits = _options.Proxy.Inbound is { } set
            ? new InboundLimits(Pick(set.PerPeerIdentity, derived.PerPeerIdentity), Pick(set.PerSourceAddress, derived.PerSourceAddress), Pick(set.PerNode, derived.PerNode))
            : derived;
        SplicePipes.MaxInUse = SplicePipes.LimitFor(soft);
        Log.Info("agent", $"descriptor limit {soft} (hard {hard}); inbound limits: {limits.PerPeerIdentity} streams per peer identity, "
            + $"{limits.PerSourceAddress} connections per source address, {limits.PerNode} per node ({soft - limits.PerNode} descriptors kept for outbound and the agent); "
            + $"at most {SplicePipes.MaxInUse} pipes for relays");
        var log = new RefusalLog(TimeSpan.FromSeconds(5));
        return new InboundAdmission(limits, (reason, detail) =>
        {
            Metrics.InboundRefused(reason switch
            {
                InboundRefusal.SourceAddress => "source_address",
                InboundRefusal.PeerIdentity => "peer_identity",
                InboundRefusal.Node => "node",
                _ => "pod",
            });
            log.Refused(reason, detail);
        });

        // 0 from a flag means "derive it".
        static int Pick(int flag, int derived) => flag > 0 ? flag : derived;
    }

    /// <summary>
    /// Binds a host listener (admin, metrics, health). In a rolling update the old agent still holds
    /// these ports until its SIGTERM, and it closes them first: a port in use is retried every
    /// second instead of failing the start, so the new agent's in-pod listeners take traffic at once.
    /// </summary>
    private void StartHostEndpoint<T>(string what, string address, Func<T> create, Action<T> start, Action<T> started)
        where T : class, IDisposable
    {
        if (BindInAgentNamespace(out var error))
        {
            return;
        }

        Log.Warn("agent", $"{what} on {address}: {error}; retrying every second (an agent being replaced still holds it)");
        _ = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
            try
            {
                while (await timer.WaitForNextTickAsync(_stopping.Token).ConfigureAwait(false))
                {
                    if (BindInAgentNamespace(out _))
                    {
                        Log.Info("agent", $"{what} listening on {address}");
                        return;
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // stopping before the port freed
            }
        });

        // Host ports belong in the agent's own namespace: bind them there explicitly instead of relying
        // on the calling thread's namespace (a thread inherits its creator's; NetNamespace keeps pool
        // threads out of pods' namespaces, and this keeps the host ports right even if that ever slips).
        bool BindInAgentNamespace(out string? error)
        {
            var (ok, message) = NetNamespace.Run(AgentNamespace, () => (TryStart(out var e), e));
            error = message;
            return ok;
        }

        bool TryStart(out string? error)
        {
            var endpoint = create();
            try
            {
                start(endpoint);
            }
            catch (Exception e) when (e is HttpListenerException or System.Net.Sockets.SocketException)
            {
                endpoint.Dispose();
                error = e.Message;
                return false;
            }

            lock (_hostEndpointGate)
            {
                if (_stopping.IsCancellationRequested)
                {
                    endpoint.Dispose();
                }
                else
                {
                    started(endpoint);
                }
            }

            error = null;
            return true;
        }
    }

    /// <summary>
    /// Makes the runtime start its socket event thread now, from this thread, in the agent's own network
    /// namespace. A new thread inherits its creator's namespace: started lazily from a pod's namespace
    /// thread, the event thread (and the thread-pool workers it wakes) would live in that pod's namespace.
    /// </summary>
    private static async Task StartSocketEngineHereAsync()
    {
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork,
            System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
        socket.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        using var cancel = new CancellationTokenSource();
        var pending = socket.ReceiveAsync(new byte[1], System.Net.Sockets.SocketFlags.None, cancel.Token);
        cancel.Cancel();
        try
        {
            await pending.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void OnInventoryChanged(InventorySnapshot snapshot) => _ = ReconcileAsync();

    private async Task ReconcileAsync()
    {
        await _reconcileGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_stopping.IsCancellationRequested)
            {
                return; // a netns retry after stop must not enroll again
            }

            var snapshot = _store!.Current;
            Reconcile(snapshot);
            Log.Info("agent", $"inventory version {snapshot.Version} applied: {EnrolledPods.Count} local pod(s) enrolled");
        }
        catch (Exception e)
        {
            Log.Error("agent", $"reconcile failed: {e.Message}");
        }
        finally
        {
            _reconcileGate.Release();
        }
    }

    private void Reconcile(InventorySnapshot snapshot)
    {
        var desired = new Dictionary<string, (Workload Workload, string NetnsPath)>();
        var withoutNetns = new HashSet<string>();
        foreach (var workload in snapshot.GetLocalEnrolledWorkloads(_options.NodeName))
        {
            if (_localNetns.Find(workload) is not { } netnsPath)
            {
                // Said once per pod, not at every retry.
                if (withoutNetns.Add(Key(workload)) && !_withoutNetns.Contains(Key(workload)))
                {
                    Log.Warn("agent", $"{Key(workload)}: enrolled but no network namespace known{(_options.Kubernetes is null ? "" : " yet (no live process in its cgroup)")}; not captured");
                }

                continue;
            }

            desired[PodIdentity(workload, netnsPath)] = (workload, netnsPath);
        }

        _localNetns.Sweep();
        _withoutNetns = withoutNetns;
        ScheduleNetnsRetry(withoutNetns.Count);

        // SVIDs only for service accounts that have a pod on this node.
        _identity?.SetAllowed(desired.Values.Select(d => new SpiffeId(_identity.TrustDomain, d.Workload.Namespace, d.Workload.ServiceAccount)));

        List<KeyValuePair<string, PodProxy>> gone;
        lock (_pods)
        {
            gone = _pods.Where(p => !desired.ContainsKey(p.Key)).ToList();
        }

        foreach (var (key, proxy) in gone)
        {
            var pod = proxy.Pod;
            try
            {
                _capture!.UnenrollPod(pod.NetnsCookie, new PodCapture(pod.Ipv4, pod.Ipv6, pod.FailOpen));
            }
            catch (Exception e)
            {
                Log.Warn("agent", $"{pod.Key}: unenroll: {e.Message}");
            }

            lock (_pods)
            {
                _pods.Remove(key);
            }

            RemoveLocal(proxy);
            _ = proxy.DisposeAsync().AsTask();

            // The delivery return path (a rule, a route, two sysctls) goes with the pod: nothing of ours stays behind.
            try
            {
                _services!.Sockets.Release(pod);
            }
            catch (Exception e)
            {
                Log.Warn("agent", $"{pod.Key}: removing the delivery return path: {e.Message}");
            }

            // The netns thread holds the namespace open; a deleted pod's namespace must be let go.
            NetNamespace.Release(pod.NetnsPath);
            Log.Info("agent", $"{pod.Key}: unenrolled");
        }

        foreach (var (key, (workload, netnsPath)) in desired)
        {
            lock (_pods)
            {
                if (_pods.ContainsKey(key))
                {
                    continue;
                }
            }

            try
            {
                Enroll(key, workload, netnsPath);
            }
            catch (Exception e)
            {
                // One pod that cannot be enrolled (its netns vanished, say) must not stop the others.
                Metrics.EnrollFailed();
                Log.Error("agent", $"{Key(workload)}: cannot enroll: {e.Message}");
            }
        }
    }

    private void Enroll(string key, Workload workload, string netnsPath)
    {
        var ipv4 = workload.Ipv4;
        var ipv6 = workload.Ipv6;
        var cookie = NetNamespace.GetCookie(netnsPath);
        var pod = new LocalPod(workload.Namespace, workload.Name, workload.ServiceAccount, netnsPath, cookie, ipv4, ipv6, workload.FailOpen);
        var proxy = PodProxy.Start(pod, _services!);
        try
        {
            var capture = new PodCapture(ipv4, ipv6, workload.FailOpen);
            _capture!.AttachInbound(pod.NetnsPath, capture, proxy.InboundListener);
            _capture.EnrollPod(cookie, capture);
        }
        catch
        {
            _ = proxy.DisposeAsync().AsTask();
            throw;
        }

        lock (_pods)
        {
            _pods[key] = proxy;
        }

        foreach (var address in workload.Addresses)
        {
            _services!.LocalPods[address] = proxy;
        }

        Log.Info("agent", $"{pod.Key}: enrolled (netns {pod.NetnsPath}, ip {ipv4}{(ipv6 is null ? "" : " " + ipv6)})");
    }

    private void RemoveLocal(PodProxy proxy)
    {
        foreach (var (address, local) in _services!.LocalPods)
        {
            if (ReferenceEquals(local, proxy))
            {
                _services.LocalPods.TryRemove(address, out _);
            }
        }
    }

    // A pod whose address or namespace changes is a new pod to the data path.
    private static string PodIdentity(Workload w, string netnsPath) => $"{Key(w)}|{netnsPath}|{string.Join(',', w.Addresses)}|{w.FailOpen}";

    /// <summary>A pod's IP can reach the inventory before its cgroup has a process here: look again, less often each time.</summary>
    private void ScheduleNetnsRetry(int unresolved)
    {
        if (unresolved == 0)
        {
            _netnsRetries = 0;
            return;
        }

        var delay = TimeSpan.FromMilliseconds(Math.Min(250 * Math.Pow(2, Math.Min(_netnsRetries++, 10)), TimeSpan.FromSeconds(10).TotalMilliseconds));
        try
        {
            _netnsRetry.Change(delay, Timeout.InfiniteTimeSpan);
        }
        catch (ObjectDisposedException)
        {
            // stopping
        }
    }

    private static string Key(Workload w) => $"{w.Namespace}/{w.Name}";

    private AgentHealth Health() => new()
    {
        EnrolledPods = EnrolledPods.Count,
        CaptureAttached = _capture is not null,
        PinnedObjects = Directory.Exists(_options.PinRoot) ? Directory.EnumerateFileSystemEntries(_options.PinRoot, "*", SearchOption.AllDirectories).Count() : 0,
        Certificates = _identity?.Current.Select(s => (s.Id.ToString(), s.NotAfter)).ToList() ?? [],
        CaService = _identity is { } identity ? (identity.CaRequestsOk, identity.CaRequestsFailed, identity.Renewals) : default,
        CertificatesFromOtherRoots = _identity?.CertificatesFromOtherRoots ?? 0,
        DescriptorLimit = _descriptorLimit,
        Inbound = _admission is not { } a ? [] :
        [
            ("source_address", a.AddressTotal, a.Limits.PerSourceAddress),
            ("peer_identity", a.IdentityTotal, a.Limits.PerPeerIdentity),
            ("node", a.NodeCount, a.Limits.PerNode),
        ],
        TunnelsOpen = _services?.Tunnels?.OpenTunnels ?? 0,
        TunnelsIdleClosed = _services?.Tunnels?.IdleClosed ?? 0,
        TunnelsEvicted = _services?.Tunnels?.Evicted ?? 0,
        TunnelsRefused = _services?.Tunnels?.Refused ?? 0,
        FirstBytesCarried = _services?.Tunnels?.FirstBytesBudget.Carried ?? 0,
        FirstBytesBudgetSpent = _services?.Tunnels?.FirstBytesBudget.Spent ?? 0,
        SocketsReserved = Weft.Proxy.SocketReserve.Held,
        Spliced = (SplicePipes.SplicedBytes, SplicePipes.Unavailable),
    };

    /// <summary>Stops accepting, lets open connections finish within the grace period, keeps the pins.</summary>
    public async Task StopAsync()
    {
        // Host ports first: a replacement agent is waiting to bind them.
        lock (_hostEndpointGate)
        {
            _stopping.Cancel();
        }

        _admin?.Dispose();
        _health?.Dispose();
        _metricsEndpoint?.Dispose();
        _source?.Dispose();
        await _netnsRetry.DisposeAsync().ConfigureAwait(false);
        List<PodProxy> pods;
        lock (_pods)
        {
            pods = _pods.Values.ToList();
            _pods.Clear();
        }

        foreach (var pod in pods)
        {
            await pod.DisposeAsync().ConfigureAwait(false);
        }

        if (_tracker is not null)
        {
            await _tracker.DrainAsync(_options.DrainGrace).ConfigureAwait(false);
        }

        await Flows.FlushAccessLogAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _heapTrim?.Dispose();
        _tracker?.Dispose();
        _identity?.Dispose();
        _capture?.Dispose();
    }
}
