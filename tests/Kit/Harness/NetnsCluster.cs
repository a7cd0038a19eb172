using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Weft.Harness;

/// <summary>
/// A Kubernetes-like cluster built from network namespaces on one machine, for tests and `weft-kit demo`.
/// <code>
///  netns weftRUN-underlay:      br0 ── n1 ─┬─ n2 ─ ...
///                                          │      │ veth pairs
///  netns weftRUN-node1:  eth0 172.31.0.1/24   eth0 172.31.0.2/24  (weftRUN-node2)
///                        fd00:31::1/64         fd00:31::2/64
///      ip_forward=1, 10.244.2.0/24 via 172.31.0.2, fd00:244:2::/64 via fd00:31::2
///      pod2 10.244.1.1/32 ── eth0 10.244.1.2/32 (netns weftRUN-node1-NS-POD, default via 10.244.1.1)
///           fd00:244:1::1/128    fd00:244:1::2/128 (dual stack; unique-local, nodad, default via fd00:244:1::1)
/// </code>
/// Nothing is added to the machine's own network namespace: every configuring command runs with
/// <c>ip -n NETNS</c>. Cgroups live under CGROUP2/weft-RUN. Everything a run creates is removed on
/// dispose, also when <see cref="CreateAsync"/> fails half-way, on SIGINT (Ctrl-C), SIGTERM, SIGHUP and process exit; runs
/// whose process died are removed by <see cref="CleanupStale"/>. That includes the eBPF pins under
/// <c>/sys/fs/bpf/weft-RUN-*</c>: agents keep their pins when stopped (a restarted agent adopts them), so
/// the harness, which made the run, removes them. Processes run in their own session, so a terminal's
/// Ctrl-C reaches only the owner, and the owner decides the order of the teardown.
/// </summary>
internal sealed partial class NetnsCluster : IAsyncDisposable
{
    internal const string NetnsDirectory = "/var/run/netns";
    private const string Component = "harness";

    /// <summary>Where agents started by the harness pin their eBPF objects (one directory per node, named for the run).</summary>
    public const string BpffsRoot = "/sys/fs/bpf";

    // cgroup first (so the process is counted by the node's eBPF from its first connect),
    // then only the netns: nsenter, unlike `ip netns exec`, keeps the mount namespace, so
    // /sys/fs/bpf and the cgroup2 mount stay visible to agents started this way. setsid (in place:
    // the shell is no group leader, so the pid stays the one we signal) takes the process out of the
    // owner's terminal session: a Ctrl-C must not kill agents before the owner has decided the teardown.
    private const string StartScript = """
        cg=$1; ns=$2; shift 2
        echo $$ > "$cg/cgroup.procs" || { echo "weft harness: cannot enter cgroup $cg" >&2; exit 125; }
        exec setsid nsenter --net="$ns" -- "$@"
        """;

    private readonly object _gate = new();

    // held for the whole build and each AddPod: a teardown (e.g. from Ctrl-C) waits for the step in
    // flight, so nothing is created after it has looked for what to remove
    private readonly object _buildGate = new();
    private volatile bool _stopping;
    private readonly List<string> _ownedDirectories = [];
    private readonly ClusterSpec _spec;
    private readonly RunRecord _record;
    private readonly List<ClusterNode> _nodes = [];
    private readonly List<string> _createdNetns = [];
    private readonly List<ManagedProcess> _processes = [];
    private readonly Dictionary<ClusterNode, int> _nextHostIndex = [];
    private readonly Lazy<List<string>> _teardown;
    private bool _tornDown;
    private EventHandler? _onProcessExit;
    private PosixSignalRegistration[] _onSignals = [];

    private NetnsCluster(ClusterSpec spec, string runId, string cgroupMount)
    {
        _spec = spec;
        RunId = runId;
        CgroupRoot = Path.Join(cgroupMount, "weft-" + runId);
        _record = RunRecord.ForCurrentProcess(runId, CgroupRoot);

        // a second caller (dispose racing a signal handler) waits for the first to finish, so the
        // process cannot exit half-way through removing things
        _teardown = new(TeardownOnce, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>Six random lowercase hex characters; every name of this run carries it.</summary>
    public string RunId { get; }

    /// <summary>True once the teardown has begun (disposal, or the cluster's own signal handler), before it stops any process.</summary>
    public bool IsTornDown
    {
        get
        {
            lock (_gate)
            {
                return _tornDown;
            }
        }
    }

    /// <summary>"weft" + RunId: the start of every network namespace name of this run.</summary>
    public string NetnsPrefix => "weft" + RunId;

    public string UnderlayNetnsName => NetnsPrefix + "-underlay";

    /// <summary>The run's own cgroup v2 directory (CGROUP2_MOUNT/weft-RUNID).</summary>
    public string CgroupRoot { get; }

    public IReadOnlyList<ClusterNode> Nodes
    {
        get
        {
            lock (_gate)
            {
                return _nodes.ToArray();
            }
        }
    }

    public IEnumerable<ClusterPod> Pods => Nodes.SelectMany(n => n.Pods);

    /// <summary>What the teardown removed, in words (null until it has run), e.g. for `weft-kit demo` to say so.</summary>
    public string? TeardownSummary { get; private set; }

    /// <summary>
    /// An eBPF pin directory for this run (BpffsRoot/weft-RUNID-NAME). The teardown detaches and removes
    /// every such directory after all processes have stopped; agents deliberately leave their pins on exit.
    /// </summary>
    public string PinRoot(string name) => Path.Join(BpffsRoot, $"weft-{RunId}-{name}");

    /// <summary>A directory (e.g. the mesh's CA and inventory) that the teardown deletes with the rest.</summary>
    public void OwnDirectory(string path)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_tornDown, this);
            _ownedDirectories.Add(path);
        }
    }

    /// <summary>Every process started in this cluster (all are killed on dispose).</summary>
    public IReadOnlyList<ManagedProcess> Processes
    {
        get
        {
            lock (_gate)
            {
                return _processes.ToArray();
            }
        }
    }

    public ClusterNode Node(string name) =>
        Nodes.FirstOrDefault(n => n.Name == name) ?? throw new ArgumentException($"no node '{name}' in cluster {RunId}");

    public ClusterPod Pod(string ns, string name) =>
        Pods.FirstOrDefault(p => p.Namespace == ns && p.Name == name) ?? throw new ArgumentException($"no pod {ns}/{name} in cluster {RunId}");

    public static async Task<NetnsCluster> CreateAsync(ClusterSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec.Nodes.Count is 0 or > 254)
        {
            throw new ArgumentException("a cluster needs 1 to 254 nodes");
        }

        foreach (var node in spec.Nodes)
        {
            ClusterNames.Validate("node", node.Name);
            foreach (var pod in node.Pods)
            {
                ClusterNames.Validate("namespace", pod.Namespace);
                ClusterNames.Validate("pod", pod.Name);
            }
        }

        var cluster = new NetnsCluster(spec, RandomNumberGenerator.GetHexString(6, lowercase: true), Cgroup2.FindMount());
        try
        {
            await Task.Run(cluster.Build).ConfigureAwait(false);
            return cluster;
        }
        catch (Exception e)
        {
            var cleanup = await Task.Run(cluster.Teardown).ConfigureAwait(false);
            var left = cleanup.Count == 0 ? "everything it made was removed" : "cleanup failed: " + string.Join("; ", cleanup);
            throw new HarnessException($"creating cluster {cluster.RunId} failed ({left}): {e.Message}", e) { RunId = cluster.RunId };
        }
    }

    /// <summary>Adds a pod to a node: netns, veth to the node, address, routes, cgroup. Works after creation too.</summary>
    public ClusterPod AddPod(ClusterNode node, PodSpec pod)
    {
        lock (_buildGate)
        {
            return AddPodLocked(node, pod);
        }
    }

    private ClusterPod AddPodLocked(ClusterNode node, PodSpec pod)
    {
        ArgumentNullException.ThrowIfNull(node);
        ArgumentNullException.ThrowIfNull(pod);
        ClusterNames.Validate("namespace", pod.Namespace);
        ClusterNames.Validate("pod", pod.Name);
        int hostIndex;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_tornDown, this);
            if (node.Pods.Any(p => p.Namespace == pod.Namespace && p.Name == pod.Name))
            {
                throw new ArgumentException($"pod {pod.Namespace}/{pod.Name} already exists on {node.Name}");
            }

            hostIndex = _nextHostIndex.GetValueOrDefault(node, 2);
            if (hostIndex > 254)
            {
                throw new HarnessException($"node {node.Name} has no free address in {node.PodCidr}");
            }

            _nextHostIndex[node] = hostIndex + 1;
        }

        Step($"pod:{node.Name}/{pod.Namespace}/{pod.Name}");
        var created = new ClusterPod(
            this,
            node,
            pod,
            hostIndex,
            $"{NetnsPrefix}-{node.Name}-{pod.Namespace}-{pod.Name}",
            Path.Join(node.CgroupPath, "pods", $"{pod.Namespace}-{pod.Name}"));
        var ns = created.NetnsName;
        AddNetns(ns);
        HostCommand.Ip("-n", node.NetnsName, "link", "add", created.NodeInterface, "type", "veth", "peer", "name", "eth0", "netns", ns);
        HostCommand.Ip("-n", node.NetnsName, "addr", "add", $"{node.PodGateway}/32", "dev", created.NodeInterface);
        HostCommand.Ip("-n", node.NetnsName, "link", "set", created.NodeInterface, "up");
        HostCommand.Ip("-n", node.NetnsName, "route", "add", $"{created.Address}/32", "dev", created.NodeInterface, "scope", "link", "src", node.PodGateway.ToString());
        HostCommand.Ip("-n", node.NetnsName, "-6", "addr", "add", $"{node.PodGateway6}/128", "dev", created.NodeInterface, "nodad");
        HostCommand.Ip("-n", node.NetnsName, "-6", "route", "add", $"{created.Address6}/128", "dev", created.NodeInterface);

        // a /32 with an on-link gateway: pods on the same node also talk through the node, as with ptp CNIs
        HostCommand.Ip("-n", ns, "addr", "add", $"{created.Address}/32", "dev", "eth0");
        HostCommand.Ip("-n", ns, "link", "set", "eth0", "up");
        HostCommand.Ip("-n", ns, "route", "add", $"{node.PodGateway}/32", "dev", "eth0", "scope", "link");
        HostCommand.Ip("-n", ns, "route", "add", "default", "via", node.PodGateway.ToString(), "dev", "eth0", "src", created.Address.ToString());

        // dual stack: unique-local IPv6 the same way, nodad so the address is usable at once
        HostCommand.Ip("-n", ns, "-6", "addr", "add", $"{created.Address6}/128", "dev", "eth0", "nodad");
        HostCommand.Ip("-n", ns, "-6", "route", "add", $"{node.PodGateway6}/128", "dev", "eth0");
        HostCommand.Ip("-n", ns, "-6", "route", "add", "default", "via", node.PodGateway6.ToString(), "dev", "eth0", "src", created.Address6.ToString());
        Directory.CreateDirectory(created.CgroupPath);
        node.Add(created);
        Log.Debug(Component, $"pod {created}");
        return created;
    }

    public ClusterPod AddPod(ClusterNode node, string ns, string name) => AddPod(node, new PodSpec(ns, name));

    /// <summary>The standalone inventory for this cluster (the README's format): namespaces, pods and the given services.</summary>
    public string InventoryYaml(params ServiceSpec[] services) => InventoryYaml(new InventoryOptions { Services = services });

    public string InventoryYaml(InventoryOptions options) => ClusterInventory.Write(Pods, options);

    /// <summary>
    /// Removes what runs of dead processes left: kills the processes in their cgroups, deletes their
    /// network namespaces and cgroups. Runs whose owner is alive are left alone. Returns the run ids removed.
    /// </summary>
    public static IReadOnlyList<string> CleanupStale()
    {
        var removed = new List<string>();
        foreach (var stale in RunRecord.ReadAll().Where(r => !r.OwnerIsAlive()))
        {
            var errors = RemoveRun(stale, [], []);
            if (errors.Count == 0)
            {
                removed.Add(stale.RunId);
            }
            else
            {
                Log.Warn(Component, $"stale run {stale.RunId} not fully removed: {string.Join("; ", errors)}");
            }
        }

        return removed;
    }

    public async ValueTask DisposeAsync()
    {
        var errors = await Task.Run(Teardown).ConfigureAwait(false);
        if (errors.Count > 0)
        {
            throw new HarnessException($"cluster {RunId} teardown left something behind: {string.Join("; ", errors)}");
        }
    }

    internal ManagedProcess Start(string cgroup, string netnsPath, string description, string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment)
    {
        var info = new ProcessStartInfo("/bin/sh");
        foreach (var arg in new[] { "-c", StartScript, "weft-start", cgroup, netnsPath, file }.Concat(args))
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[key] = value;
        }

        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_tornDown, this);
            var process = new ManagedProcess(info, description);
            _processes.Add(process);
            Log.Debug(Component, $"started {process}");
            return process;
        }
    }

    private void Build()
    {
        lock (_buildGate)
        {
            BuildLocked();
        }
    }

    private void BuildLocked()
    {
        // the record comes first: whatever happens next, CleanupStale can find it
        _record.Write();
        RegisterExitHandlers();
        Step("cgroup");
        Directory.CreateDirectory(CgroupRoot);

        Step("underlay");
        AddNetns(UnderlayNetnsName);
        HostCommand.Ip("-n", UnderlayNetnsName, "link", "add", "br0", "type", "bridge");
        HostCommand.Ip("-n", UnderlayNetnsName, "link", "set", "br0", "up");

        for (var i = 0; i < _spec.Nodes.Count; i++)
        {
            AddNode(i + 1, _spec.Nodes[i].Name);
        }

        Step("routes");
        foreach (var node in _nodes)
        {
            foreach (var other in _nodes.Where(o => o != node))
            {
                HostCommand.Ip("-n", node.NetnsName, "route", "add", other.PodCidr, "via", other.Address.ToString(), "dev", "eth0");
                HostCommand.Ip("-n", node.NetnsName, "-6", "route", "add", other.PodCidr6, "via", other.Address6.ToString(), "dev", "eth0");
            }
        }

        for (var i = 0; i < _spec.Nodes.Count; i++)
        {
            foreach (var pod in _spec.Nodes[i].Pods)
            {
                AddPod(_nodes[i], pod);
            }
        }

        Log.Info(Component, $"cluster {RunId}: {_nodes.Count} nodes, {Pods.Count()} pods, cgroup {CgroupRoot}");
    }

    private void AddNode(int index, string name)
    {
        Step($"node:{name}");
        var node = new ClusterNode(this, index, name, $"{NetnsPrefix}-{name}", Path.Join(CgroupRoot, name));
        lock (_gate)
        {
            if (_nodes.Any(n => n.Name == name))
            {
                throw new ArgumentException($"node name '{name}' is used twice");
            }

            _nodes.Add(node);
        }

        AddNetns(node.NetnsName);
        var port = $"n{index}";
        HostCommand.Ip("-n", UnderlayNetnsName, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.NetnsName);
        HostCommand.Ip("-n", UnderlayNetnsName, "link", "set", port, "master", "br0");
        HostCommand.Ip("-n", UnderlayNetnsName, "link", "set", port, "up");
        HostCommand.Ip("-n", node.NetnsName, "addr", "add", $"{node.Address}/24", "dev", "eth0");
        HostCommand.Ip("-n", node.NetnsName, "-6", "addr", "add", $"{node.Address6}/64", "dev", "eth0", "nodad");
        HostCommand.Ip("-n", node.NetnsName, "link", "set", "eth0", "up");

        // inside the node's netns only: forward for its pods; no reverse path filter, pods answer via the node
        HostCommand.Ip("netns", "exec", node.NetnsName, "sysctl", "-qw",
            "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.forwarding=1");
        Directory.CreateDirectory(node.AgentCgroupPath);
        Directory.CreateDirectory(Path.Join(node.CgroupPath, "pods"));
        Log.Debug(Component, $"node {node}");
    }

    private void AddNetns(string name)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_tornDown, this);
            _createdNetns.Add(name);
        }

        HostCommand.Ip("netns", "add", name);
        HostCommand.Ip("-n", name, "link", "set", "lo", "up");
    }

    private void Step(string name)
    {
        if (_stopping)
        {
            throw new HarnessException($"cluster {RunId} is being torn down (interrupted at step '{name}')");
        }

        if (_spec.FailAtStep == name)
        {
            throw new HarnessException($"injected failure at step '{name}'");
        }
    }

    private void RegisterExitHandlers()
    {
        if (!_spec.TeardownOnExit)
        {
            return;
        }

        // ProcessExit alone is not enough: on SIGTERM the runtime terminates without raising it.
        // The signal handlers leave context.Cancel false, so the signal's usual exit still follows.
        _onProcessExit = (_, _) => TeardownQuietly();
        AppDomain.CurrentDomain.ProcessExit += _onProcessExit;
        _onSignals = [.. new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP }
            .Select(signal => PosixSignalRegistration.Create(signal, _ => TeardownQuietly()))];
    }

    private void TeardownQuietly()
    {
        foreach (var error in Teardown())
        {
            Log.Warn(Component, $"cluster {RunId} teardown: {error}");
        }
    }

    private List<string> Teardown() => _teardown.Value;

    private List<string> TeardownOnce()
    {
        // a build step in flight finishes (or fails at the next step) before we look for what to remove
        _stopping = true;
        lock (_buildGate)
        {
        }

        ManagedProcess[] started;
        string[] directories;
        lock (_gate)
        {
            _tornDown = true;
            started = _processes.ToArray();
            directories = _ownedDirectories.ToArray();
        }

        if (_onProcessExit != null)
        {
            AppDomain.CurrentDomain.ProcessExit -= _onProcessExit;
        }

        foreach (var registration in _onSignals)
        {
            registration.Dispose();
        }

        // SIGTERM first, so agents can drain and keep their pins as on a real node; SIGKILL after the grace period
        foreach (var process in started)
        {
            process.Stop();
        }

        var graceEnds = DateTime.UtcNow + _spec.StopGracePeriod;
        var errors = new List<string>();
        foreach (var process in started)
        {
            try
            {
                process.WaitForExit(graceEnds - DateTime.UtcNow);
                process.KillAndWait(TimeSpan.FromSeconds(5));
                if (process.ExitCode == null)
                {
                    errors.Add($"{process} did not exit after SIGKILL");
                }
            }
            catch (Exception e)
            {
                errors.Add($"{process}: {e.Message}");
            }
        }

        var removed = new List<string>();
        errors.AddRange(RemoveRun(_record, _createdNetns, removed));
        foreach (var directory in directories)
        {
            try
            {
                if (Directory.Exists(directory))
                {
                    Directory.Delete(directory, recursive: true);
                    removed.Add("directory " + directory);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                errors.Add($"delete {directory}: {e.Message}");
            }
        }

        TeardownSummary = removed.Count == 0 ? "nothing was left to remove" : string.Join("; ", removed);
        Log.Info(Component, $"cluster {RunId} removed: {TeardownSummary}" + (errors.Count == 0 ? "" : $"; LEFT BEHIND: {string.Join("; ", errors)}"));
        return errors;
    }

    /// <summary>
    /// Kills what is left in the run's cgroups, detaches and removes its eBPF pins, deletes its namespaces,
    /// cgroups and record; adds what it removed to <paramref name="removed"/> and returns what failed.
    /// </summary>
    private static List<string> RemoveRun(RunRecord run, IEnumerable<string> knownNetns, List<string> removed)
    {
        var errors = new List<string>();
        if (!RunIdPattern().IsMatch(run.RunId) || Path.GetFileName(run.CgroupRoot) != "weft-" + run.RunId)
        {
            // a record we did not write: touch nothing it names
            errors.Add($"run record {run.RunId} names cgroup '{run.CgroupRoot}', not a harness run's; left alone");
            return errors;
        }

        void Try(string what, Action action)
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                errors.Add($"{what}: {e.Message}");
            }
        }

        // children of our processes inherit the run's cgroups: this reaches them and nothing else
        Try("kill processes in " + run.CgroupRoot, () => Cgroup2.KillAll(run.CgroupRoot));

        // every process is gone, so no agent can pin again; found by name, so a run whose owner died is covered too
        var pinRoots = Directory.Exists(BpffsRoot) ? Directory.EnumerateDirectories(BpffsRoot, $"weft-{run.RunId}-*").ToList() : [];
        foreach (var pins in pinRoots)
        {
            Try("remove eBPF pins " + pins, () =>
            {
                Weft.Capture.BpfCapture.Uninstall(pins);
                removed.Add($"eBPF programs, links and pins under {pins}");
            });
        }

        var prefix = "weft" + run.RunId + "-";
        var netns = knownNetns
            .Concat(Directory.Exists(NetnsDirectory) ? Directory.EnumerateFiles(NetnsDirectory).Select(Path.GetFileName).OfType<string>() : [])
            .Where(n => n.StartsWith(prefix, StringComparison.Ordinal))
            .Distinct()
            .Reverse()
            .ToList();
        var deletedNetns = 0;
        foreach (var name in netns)
        {
            if (File.Exists(Path.Join(NetnsDirectory, name)))
            {
                Try("delete netns " + name, () =>
                {
                    HostCommand.Ip("netns", "delete", name);
                    deletedNetns++;
                });
            }
        }

        if (deletedNetns > 0)
        {
            removed.Add($"{deletedNetns} network namespaces {prefix}*");
        }

        if (Directory.Exists(run.CgroupRoot))
        {
            Try("remove cgroup " + run.CgroupRoot, () =>
            {
                Cgroup2.RemoveTree(run.CgroupRoot, TimeSpan.FromSeconds(10));
                removed.Add($"cgroup tree {run.CgroupRoot}");
            });
        }

        if (errors.Count == 0)
        {
            Try("remove run record", run.Delete);
        }

        return errors;
    }

    [System.Text.RegularExpressions.GeneratedRegex("^[0-9a-f]{6}$")]
    private static partial System.Text.RegularExpressions.Regex RunIdPattern();
}
