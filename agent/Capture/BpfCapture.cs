using System.Net;
using System.Net.Sockets;
using System.Text;
using Tmds.Linux;
using Weft.Capture.Internal;

namespace Weft.Capture;

/// <summary>
/// The agent's eBPF capture: loads bpf/capture.bpf.o (connect4/6, sockops) and bpf/inbound.bpf.o
/// (sk_lookup) with libbpf, pins maps and links under <see cref="CaptureOptions.PinRoot"/>, and
/// manages which pods are captured.
/// <code>
/// PinRoot/maps/   config enrolled pod_addrs inbound_listeners agent_sockets deliveries pending_dst orig_dst
/// PinRoot/links/  cgroup_connect4 cgroup_connect6 cgroup_sockops   (on CgroupPath)
///                 sk_lookup-&lt;netns cookie&gt;                          (one per pod netns)
/// </code>
/// A restarted agent's <see cref="Open"/> reuses the pinned maps and swaps its programs into the
/// pinned links (bpf_link update: no moment without capture). <see cref="Dispose"/> only closes
/// file descriptors; <see cref="Uninstall"/> is the one way capture stops.
/// </summary>
internal sealed class BpfCapture : IDisposable
{
    private const string Component = "capture";
    private const string SkLookupProgram = "weft_sk_lookup";
    private const string SkLookupLinkPrefix = "sk_lookup-";
    private const int BpfLinkTypeCgroup = 3;

    // struct bpf_map_info: type, id, key_size, value_size, ... (the part read here fits in 64 bytes)
    private const int BpfMapInfoSize = 64;
    private const int BpfMapInfoValueSize = 12;

    private static readonly (string Program, string Link)[] CgroupHooks =
    [
        ("weft_connect4", "cgroup_connect4"),
        ("weft_connect6", "cgroup_connect6"),
        ("weft_sockops", "cgroup_sockops"),
    ];

    private readonly CaptureOptions _options;
    private readonly BpfObject _outbound;
    private readonly BpfObject _inbound;
    private readonly int _configFd;
    private readonly int _enrolledFd;
    private readonly int _podAddrsFd;
    private readonly int _listenersFd;
    private readonly int _origDstFd;
    private readonly int _agentSocketsFd;
    private readonly int _deliveriesFd;
    private readonly Lock _gate = new();
    private volatile bool _disposed;
    private int _claimsInFlight;

    private BpfCapture(CaptureOptions options, BpfObject outbound, BpfObject inbound)
    {
        _options = options;
        _outbound = outbound;
        _inbound = inbound;
        _configFd = outbound.MapFd("config");
        _enrolledFd = outbound.MapFd("enrolled");
        _podAddrsFd = inbound.MapFd("pod_addrs");
        _listenersFd = inbound.MapFd("inbound_listeners");
        _origDstFd = outbound.MapFd("orig_dst");
        _agentSocketsFd = outbound.MapFd("agent_sockets");
        _deliveriesFd = inbound.MapFd("deliveries");
    }

    private string MapDirectory => Path.Combine(_options.PinRoot, "maps");

    private string LinkDirectory => Path.Combine(_options.PinRoot, "links");

    /// <summary>
    /// Loads the programs, adopts pinned maps, and creates or updates the pinned cgroup links and
    /// any pinned sk_lookup links. Throws <see cref="CaptureException"/> naming cause and fix.
    /// </summary>
    public static BpfCapture Open(CaptureOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ValidateExcludedPorts(options);
        try
        {
            LibbpfLog.Install();
        }
        catch (DllNotFoundException e)
        {
            throw new CaptureException("libbpf.so.1 is not installed: install libbpf 1.x (Debian/Ubuntu: `apt-get install libbpf1`)", 0, e);
        }
        Mounts.EnsureBpfFs(options.PinRoot);
        Mounts.EnsureCgroup2(options.CgroupPath);

        var mapDirectory = Path.Combine(options.PinRoot, "maps");
        Directory.CreateDirectory(mapDirectory);
        Directory.CreateDirectory(Path.Combine(options.PinRoot, "links"));
        CheckPinnedLayout(mapDirectory);

        BpfObject? outbound = null;
        BpfObject? inbound = null;
        try
        {
            outbound = BpfObject.Load("bpf/capture.bpf.o", mapDirectory);
            inbound = BpfObject.Load("bpf/inbound.bpf.o", mapDirectory);
            var capture = new BpfCapture(options, outbound, inbound);
            capture.WriteConfig();
            capture.AttachCgroupHooks();
            capture.AdoptInboundLinks();
            AgentSockets.Add(capture);
            Log.Info(Component, $"capture on {options.CgroupPath}, pins under {options.PinRoot}");
            return capture;
        }
        catch
        {
            inbound?.Dispose();
            outbound?.Dispose();
            throw;
        }
    }

    /// <summary>Captures the outbound TCP connections made in the pod's network namespace.</summary>
    public unsafe void EnrollPod(ulong netnsCookie, PodCapture pod)
    {
        var value = ToMapValue(pod);
        lock (_gate)
        {
            ThrowIfDisposed();
            Update(_enrolledFd, &netnsCookie, &value, "enrolled");
            foreach (var address in AddressesOf(pod))
            {
                var key = address;
                Update(_podAddrsFd, &key, &value, "pod_addrs");
            }
        }
    }

    /// <summary>Stops capturing the pod, outbound and inbound (its sk_lookup link is removed).</summary>
    public unsafe void UnenrollPod(ulong netnsCookie, PodCapture pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        lock (_gate)
        {
            ThrowIfDisposed();
            Delete(_enrolledFd, &netnsCookie, "enrolled");
            foreach (var address in AddressesOf(pod))
            {
                var key = address;
                Delete(_podAddrsFd, &key, "pod_addrs");
                Delete(_listenersFd, &key, "inbound_listeners");
            }
            var path = SkLookupLinkPath(netnsCookie);
            if (File.Exists(path))
            {
                DetachPinnedLink(path);
            }
        }
    }

    /// <summary>
    /// Steers inbound TCP connections for the pod's addresses to <paramref name="inboundListener"/>,
    /// a listening socket made inside that netns (see <see cref="NetNamespace.Run{T}"/>). An IPv4
    /// listener serves the pod's IPv4 address; a dual-stack IPv6 listener serves both.
    /// </summary>
    public unsafe void AttachInbound(string netnsPath, PodCapture pod, Socket inboundListener)
    {
        ArgumentNullException.ThrowIfNull(inboundListener);
        var value = ToMapValue(pod);
        var netnsCookie = NetNamespace.GetCookie(netnsPath);
        if (NetNamespace.GetCookie(inboundListener) != netnsCookie)
        {
            throw new ArgumentException($"the inbound listener was not made inside {netnsPath}; create it with NetNamespace.Run", nameof(inboundListener));
        }

        lock (_gate)
        {
            ThrowIfDisposed();
            var served = 0;
            foreach (var address in AddressesOf(pod))
            {
                var key = address;
                Update(_podAddrsFd, &key, &value, "pod_addrs");
                if (!ListenerServes(inboundListener, IsIpv4(key)))
                {
                    continue;
                }
                var added = false;
                try
                {
                    inboundListener.SafeHandle.DangerousAddRef(ref added);
                    ulong fd = (ulong)inboundListener.SafeHandle.DangerousGetHandle();
                    var rc = Libbpf.MapUpdate(_listenersFd, &key, &fd, Libbpf.BPF_ANY);
                    if (rc < 0)
                    {
                        throw new CaptureException(
                            $"the kernel refused the inbound listener for {netnsPath} ({Mounts.Describe(-rc)}); it must be a TCP socket in listening state", -rc);
                    }
                    served++;
                }
                finally
                {
                    if (added)
                    {
                        inboundListener.SafeHandle.DangerousRelease();
                    }
                }
            }
            if (served == 0)
            {
                throw new ArgumentException($"the inbound listener ({inboundListener.AddressFamily}) serves none of the pod's addresses", nameof(inboundListener));
            }

            var path = SkLookupLinkPath(netnsCookie);
            if (!TryUpdatePinnedLink(path, _inbound.Program(SkLookupProgram)))
            {
                AttachNetns(netnsPath, path);
            }
        }
    }

    /// <summary>
    /// Marks <paramref name="socket"/>, made by the agent inside a pod's netns, as the agent's own:
    /// connect4/6 never capture it. Call it before connect(). The claim is socket-local storage in
    /// `agent_sockets`, written through this map's fd, which only the agent holds; it dies with the socket.
    /// </summary>
    public unsafe void ClaimForAgent(Socket socket)
    {
        ArgumentNullException.ThrowIfNull(socket);
        Interlocked.Increment(ref _claimsInFlight);
        try
        {
            if (_disposed)
            {
                return; // this capture's process is shutting down: its pins are another capture's business
            }
            var added = false;
            try
            {
                socket.SafeHandle.DangerousAddRef(ref added);
                var fd = (int)socket.SafeHandle.DangerousGetHandle();
                var value = 1u;
                var rc = Libbpf.MapUpdate(_agentSocketsFd, &fd, &value, Libbpf.BPF_ANY);
                if (rc < 0)
                {
                    throw new CaptureException($"registering an agent socket in agent_sockets failed ({Mounts.Describe(-rc)}); it would be captured, so it is not used", -rc);
                }
            }
            finally
            {
                if (added)
                {
                    socket.SafeHandle.DangerousRelease();
                }
            }
        }
        finally
        {
            Interlocked.Decrement(ref _claimsInFlight);
        }
    }

    /// <summary>
    /// Lets sk_lookup pass the SYN of the agent's transparent delivery from <paramref name="from"/> to
    /// <paramref name="to"/> (add: true, before connect()) to the app, or forgets it (add: false, once connect() ended).
    /// </summary>
    public unsafe void MarkDelivery(IPEndPoint from, IPEndPoint to, bool add)
    {
        if (_disposed)
        {
            return;
        }

        var key = new WeftDeliveryKey { RemotePort = (ushort)from.Port, LocalPort = (ushort)to.Port };
        Normalize(from.Address).TryWriteBytes(new Span<byte>(key.Remote.Bytes, 16), out _);
        Normalize(to.Address).TryWriteBytes(new Span<byte>(key.Local.Bytes, 16), out _);
        var value = 1u;
        var rc = add ? Libbpf.MapUpdate(_deliveriesFd, &key, &value, Libbpf.BPF_ANY) : Libbpf.MapDelete(_deliveriesFd, &key);
        if (rc < 0 && (add || -rc != LibC.ENOENT))
        {
            throw new CaptureException($"{(add ? "adding" : "removing")} a delivery in deliveries failed ({Mounts.Describe(-rc)})", -rc);
        }

        static IPAddress Normalize(IPAddress a) => a.AddressFamily == AddressFamily.InterNetwork ? a.MapToIPv6() : a;
    }

    /// <summary>Whether <paramref name="socket"/> carries the agent's storage in `agent_sockets` (for tests and diagnostics).</summary>
    internal unsafe bool IsAgentSocket(Socket socket)
    {
        var fd = (int)socket.SafeHandle.DangerousGetHandle();
        var value = 0u;
        return Libbpf.MapLookup(_agentSocketsFd, &fd, &value) == 0;
    }

    /// <summary>
    /// The destination the client in that netns asked for, recorded when its connect() was
    /// redirected; <paramref name="clientPort"/> and <paramref name="family"/> are the accepted
    /// socket's remote port and address family. Taking it removes it.
    /// </summary>
    public unsafe bool TryTakeOriginalDestination(ulong netnsCookie, ushort clientPort, AddressFamily family, out IPEndPoint? destination)
    {
        destination = null;
        var key = new WeftConnKey
        {
            NetnsCookie = netnsCookie,
            ClientPort = clientPort,
            Family = family == AddressFamily.InterNetworkV6 ? MapLayout.FamilyInet6 : MapLayout.FamilyInet,
        };
        WeftOrigDst value;
        var rc = Libbpf.MapLookupAndDelete(_origDstFd, &key, &value);
        if (rc < 0)
        {
            return -rc == LibC.ENOENT ? false : throw new CaptureException($"reading orig_dst failed ({Mounts.Describe(-rc)})", -rc);
        }
        var address = value.Family == MapLayout.FamilyInet6
            ? new IPAddress(new ReadOnlySpan<byte>(value.Addr, 16))
            : new IPAddress(new ReadOnlySpan<byte>(value.Addr, 4));
        destination = new IPEndPoint(address, value.Port);
        return true;
    }

    /// <summary>Whether the netns cookie is in the pinned `enrolled` map (for tests and diagnostics).</summary>
    internal unsafe bool IsEnrolled(ulong netnsCookie)
    {
        WeftPod value;
        return Libbpf.MapLookup(_enrolledFd, &netnsCookie, &value) == 0;
    }

    /// <summary>Detaches every pinned link under <paramref name="pinRoot"/> and removes every pin.</summary>
    public static void Uninstall(string pinRoot)
    {
        if (!Directory.Exists(pinRoot))
        {
            return;
        }
        LibbpfLog.Install();
        var links = Path.Combine(pinRoot, "links");
        var enrolledNetns = new HashSet<ulong>();
        if (Directory.Exists(links))
        {
            foreach (var path in Directory.GetFiles(links))
            {
                // sk_lookup-<netns cookie>: a pod whose namespace got the delivery return path
                var name = Path.GetFileName(path);
                if (name.StartsWith(SkLookupLinkPrefix, StringComparison.Ordinal)
                    && ulong.TryParse(name.AsSpan(SkLookupLinkPrefix.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var cookie))
                {
                    enrolledNetns.Add(cookie);
                }

                DetachPinnedLink(path);
            }
        }

        var cleaned = DeliveryReturnPath.RemoveFromNamespaces(enrolledNetns);
        if (cleaned > 0)
        {
            Log.Info(Component, $"removed the delivery return path from {cleaned} pod network namespace(s)");
        }
        Directory.Delete(pinRoot, recursive: true);
        Log.Info(Component, $"uninstalled capture pinned under {pinRoot}");
    }

    /// <summary>Closes file descriptors only: pinned links keep capturing, pinned maps keep state.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            AgentSockets.Remove(this);
            // a claim that read `disposed` as false is still using the map fd: let it finish first
            // (the fence pairs with the claim's Interlocked.Increment before it reads `disposed`)
            Interlocked.MemoryBarrier();
            var wait = new SpinWait();
            while (Volatile.Read(ref _claimsInFlight) != 0)
            {
                wait.SpinOnce();
            }
            _inbound.Dispose();
            _outbound.Dispose();
        }
    }

    private unsafe void WriteConfig()
    {
        var config = new WeftConfig
        {
            LayoutVersion = MapLayout.LayoutVersion,
            OutboundPort = _options.OutboundPort,
            InboundPort = _options.InboundPort,
            TunnelPort = _options.TunnelPort,
        };
        for (var i = 0; i < _options.ExcludedPorts.Count; i++)
        {
            config.ExcludedPorts[i] = _options.ExcludedPorts[i];
        }
        var key = 0u;
        Update(_configFd, &key, &config, "config");
    }

    private static void ValidateExcludedPorts(CaptureOptions options)
    {
        if (options.ExcludedPorts.Count > MapLayout.MaxExcludedPorts)
        {
            throw new ArgumentException($"at most {MapLayout.MaxExcludedPorts} excluded ports, got {options.ExcludedPorts.Count}", nameof(options));
        }
        ushort[] agentPorts = [options.OutboundPort, options.InboundPort, options.TunnelPort, MapLayout.AdminPort, MapLayout.MetricsPort, MapLayout.ReadyPort];
        foreach (var port in options.ExcludedPorts)
        {
            if (port == 0)
            {
                throw new ArgumentException("excluded port 0 is not a port", nameof(options));
            }
            if (Array.IndexOf(agentPorts, port) >= 0)
            {
                throw new ArgumentException(
                    $"port {port} is one of the agent's ({string.Join(", ", agentPorts)}) and cannot be excluded from capture: connects to it must reach the agent, which refuses them", nameof(options));
            }
        }
    }

    private void AttachCgroupHooks()
    {
        var cgroupId = InodeOf(_options.CgroupPath);
        foreach (var (programName, linkName) in CgroupHooks)
        {
            var path = Path.Combine(LinkDirectory, linkName);
            var program = _outbound.Program(programName);
            if (File.Exists(path))
            {
                var linkCgroup = PinnedCgroupLinkCgroupId(path);
                if (linkCgroup == cgroupId && TryUpdatePinnedLink(path, program))
                {
                    continue;
                }
                // pinned for another cgroup, or its cgroup is gone: replace it
                Log.Info(Component, $"replacing pinned link {linkName} (cgroup id {linkCgroup}, want {cgroupId})");
                DetachPinnedLink(path);
            }
            AttachCgroup(program, programName, path);
        }
    }

    private void AdoptInboundLinks()
    {
        var program = _inbound.Program(SkLookupProgram);
        foreach (var path in Directory.GetFiles(LinkDirectory, SkLookupLinkPrefix + "*"))
        {
            if (!TryUpdatePinnedLink(path, program))
            {
                Log.Info(Component, $"dropping {Path.GetFileName(path)}: its network namespace is gone");
                DetachPinnedLink(path);
            }
        }
    }

    private unsafe void AttachCgroup(nint program, string programName, string path)
    {
        var fd = OpenReadOnly(_options.CgroupPath, LibC.O_DIRECTORY);
        nint link;
        int errno;
        try
        {
            link = Libbpf.ProgramAttachCgroup(program, fd);
            errno = Libbpf.LastErrno();
        }
        finally
        {
            LibC.close(fd);
        }
        if (link == 0)
        {
            throw AttachFailure($"attaching {programName} to cgroup {_options.CgroupPath}", errno, "cgroup bpf_link needs Linux 5.7+");
        }
        PinAndRelease(link, path);
    }

    private unsafe void AttachNetns(string netnsPath, string path)
    {
        var fd = OpenReadOnly(netnsPath, 0);
        nint link;
        int errno;
        try
        {
            link = Libbpf.ProgramAttachNetns(_inbound.Program(SkLookupProgram), fd);
            errno = Libbpf.LastErrno();
        }
        finally
        {
            LibC.close(fd);
        }
        if (link == 0)
        {
            throw AttachFailure($"attaching sk_lookup to network namespace {netnsPath}", errno, "sk_lookup needs Linux 5.9+");
        }
        PinAndRelease(link, path);
    }

    private static void PinAndRelease(nint link, string path)
    {
        var rc = Libbpf.LinkPin(link, path);
        if (rc < 0)
        {
            Libbpf.LinkDestroy(link); // not pinned: closing it detaches it again
            throw new CaptureException($"pinning link {path} failed ({Mounts.Describe(-rc)}); is another agent using the same pin root?", -rc);
        }
        Libbpf.LinkDestroy(link); // closes our fd only: the pin keeps the link attached
    }

    /// <summary>Swaps <paramref name="program"/> into a pinned link; false when there is no usable link there.</summary>
    private static bool TryUpdatePinnedLink(string path, nint program)
    {
        if (!File.Exists(path))
        {
            return false;
        }
        var link = Libbpf.LinkOpen(path);
        if (link == 0)
        {
            var errno = Libbpf.LastErrno();
            return errno == LibC.ENOENT ? false : throw new CaptureException($"opening pinned link {path} failed ({Mounts.Describe(errno)})", errno);
        }
        try
        {
            var rc = Libbpf.LinkUpdateProgram(link, program);
            if (rc == -LibC.ENOLINK)
            {
                return false; // what it was attached to is gone
            }
            return rc >= 0 ? true : throw new CaptureException($"updating pinned link {path} failed ({Mounts.Describe(-rc)})", -rc);
        }
        finally
        {
            Libbpf.LinkDestroy(link);
        }
    }

    private static void DetachPinnedLink(string path)
    {
        var link = Libbpf.LinkOpen(path);
        if (link != 0)
        {
            // fails harmlessly (ENOLINK) when what it was attached to is already gone
            Libbpf.LinkDetach(link);
            Libbpf.LinkDestroy(link);
        }
        File.Delete(path);
    }

    private static unsafe ulong PinnedCgroupLinkCgroupId(string path)
    {
        var fd = Libbpf.ObjGet(path);
        if (fd < 0)
        {
            return 0;
        }
        try
        {
            // struct bpf_link_info: type, id, prog_id, then (8-aligned) cgroup.cgroup_id
            var info = stackalloc byte[128];
            new Span<byte>(info, 128).Clear();
            var length = 128u;
            if (Libbpf.ObjGetInfoByFd(fd, info, &length) < 0 || *(uint*)info != BpfLinkTypeCgroup)
            {
                return 0;
            }
            return *(ulong*)(info + 16);
        }
        finally
        {
            LibC.close(fd);
        }
    }

    /// <summary>On cgroup v2 a cgroup's id is its directory's inode number.</summary>
    private static unsafe ulong InodeOf(string path)
    {
        stat st;
        int rc;
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        {
            rc = LibC.stat(p, &st);
        }
        return rc == 0 ? (ulong)st.st_ino : throw new CaptureException($"stat {path} failed ({Mounts.Describe(LibC.errno)})", LibC.errno);
    }

    private static unsafe int OpenReadOnly(string path, int flags)
    {
        int fd;
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        {
            fd = LibC.open(p, LibC.O_RDONLY | LibC.O_CLOEXEC | flags, 0);
        }
        return fd >= 0 ? fd : throw new CaptureException($"cannot open {path} ({Mounts.Describe(LibC.errno)})", LibC.errno);
    }

    /// <summary>
    /// Compares the layout version stamped in the pinned `config` with this agent's. Same version:
    /// everything is adopted. A version this agent upgrades from (<see cref="MapLayout.UpgradableFrom"/>):
    /// the maps whose definition changed are unpinned, so libbpf creates them anew, and all others are
    /// adopted with their state. The old programs keep their old maps until the pinned links are
    /// updated a moment later, so capture never pauses. Any other version (a newer agent's, say):
    /// refused, naming the fix.
    /// </summary>
    private static unsafe void CheckPinnedLayout(string mapDirectory)
    {
        var path = Path.Combine(mapDirectory, "config");
        if (!File.Exists(path))
        {
            return;
        }
        var fd = Libbpf.ObjGet(path);
        if (fd < 0)
        {
            return; // libbpf will say what is wrong when it tries to reuse it
        }
        uint version;
        try
        {
            // read with the pinned map's own value size: another version's struct may be larger
            var info = stackalloc byte[BpfMapInfoSize];
            new Span<byte>(info, BpfMapInfoSize).Clear();
            var length = (uint)BpfMapInfoSize;
            if (Libbpf.ObjGetInfoByFd(fd, info, &length) < 0)
            {
                return;
            }
            var valueSize = *(uint*)(info + BpfMapInfoValueSize);
            if (valueSize < sizeof(uint) || valueSize > 4096)
            {
                return; // not a config map Weft ever made: libbpf will refuse to reuse it, naming it
            }
            var value = stackalloc byte[(int)valueSize];
            var key = 0u;
            if (Libbpf.MapLookup(fd, &key, value) < 0)
            {
                return;
            }
            version = *(uint*)value;
        }
        finally
        {
            LibC.close(fd);
        }

        if (version == 0 || version == MapLayout.LayoutVersion)
        {
            return;
        }
        if (!MapLayout.UpgradableFrom.TryGetValue(version, out var replaced))
        {
            throw new CaptureException(
                $"the maps pinned under {mapDirectory} have layout version {version}, this agent uses {MapLayout.LayoutVersion} and upgrades only from " +
                $"{string.Join(", ", MapLayout.UpgradableFrom.Keys)}; remove them with BpfCapture.Uninstall (weft uninstall), which drops captured state, " +
                "then start the agent again");
        }
        foreach (var map in replaced)
        {
            File.Delete(Path.Combine(mapDirectory, map));
        }
        Log.Info(Component, $"upgrading pinned layout {version} to {MapLayout.LayoutVersion}: replacing {string.Join(", ", replaced)}, adopting the other maps");
    }

    private static CaptureException AttachFailure(string what, int errno, string kernelNeed)
    {
        var fix = errno switch
        {
            1 or 13 => "run the agent as root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
            22 or 95 => $"this kernel lacks the hook: {kernelNeed}",
            _ => "see the errno",
        };
        return new CaptureException($"{what} failed ({Mounts.Describe(errno)}); {fix}", errno);
    }

    private static unsafe void Update(int fd, void* key, void* value, string map)
    {
        var rc = Libbpf.MapUpdate(fd, key, value, Libbpf.BPF_ANY);
        if (rc < 0)
        {
            var hint = -rc == 7 || -rc == 28 ? ": the map is full" : "";
            throw new CaptureException($"updating map {map} failed ({Mounts.Describe(-rc)}){hint}", -rc);
        }
    }

    private static unsafe void Delete(int fd, void* key, string map)
    {
        var rc = Libbpf.MapDelete(fd, key);
        if (rc < 0 && -rc != LibC.ENOENT)
        {
            throw new CaptureException($"deleting from map {map} failed ({Mounts.Describe(-rc)})", -rc);
        }
    }

    private string SkLookupLinkPath(ulong netnsCookie) =>
        Path.Combine(LinkDirectory, SkLookupLinkPrefix + netnsCookie.ToString(System.Globalization.CultureInfo.InvariantCulture));

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static unsafe WeftPod ToMapValue(PodCapture pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var value = new WeftPod { Flags = pod.FailOpen ? MapLayout.PodFailOpen : 0 };
        if (pod.Ipv4 is { } v4)
        {
            if (v4.AddressFamily != AddressFamily.InterNetwork)
            {
                throw new ArgumentException($"{v4} is not an IPv4 address", nameof(pod));
            }
            Span<byte> bytes = stackalloc byte[4];
            v4.TryWriteBytes(bytes, out _);
            value.Ipv4 = BitConverter.ToUInt32(bytes); // bytes stay in network order, as BPF compares them
            value.Flags |= MapLayout.PodHasIpv4;
        }
        if (pod.Ipv6 is { } v6)
        {
            if (v6.AddressFamily != AddressFamily.InterNetworkV6 || v6.IsIPv4MappedToIPv6)
            {
                throw new ArgumentException($"{v6} is not an IPv6 address", nameof(pod));
            }
            v6.TryWriteBytes(new Span<byte>(value.Ipv6, 16), out _);
            value.Flags |= MapLayout.PodHasIpv6;
        }
        return value;
    }

    private static unsafe List<WeftAddr> AddressesOf(PodCapture pod)
    {
        var addresses = new List<WeftAddr>(2);
        if (pod.Ipv4 is { } v4)
        {
            var a = new WeftAddr();
            v4.MapToIPv6().TryWriteBytes(new Span<byte>(a.Bytes, 16), out _);
            addresses.Add(a);
        }
        if (pod.Ipv6 is { } v6)
        {
            var a = new WeftAddr();
            v6.TryWriteBytes(new Span<byte>(a.Bytes, 16), out _);
            addresses.Add(a);
        }
        return addresses;
    }

    private static unsafe bool IsIpv4(WeftAddr a)
    {
        var bytes = new ReadOnlySpan<byte>(a.Bytes, 16);
        return !bytes[..10].ContainsAnyExcept((byte)0) && bytes[10] == 0xff && bytes[11] == 0xff;
    }

    /// <summary>sk_assign only hands IPv4 lookups to IPv4 or dual-stack IPv6 sockets, IPv6 lookups to IPv6 ones.</summary>
    private static bool ListenerServes(Socket listener, bool ipv4) =>
        listener.AddressFamily == AddressFamily.InterNetworkV6
            ? !ipv4 || listener.DualMode
            : ipv4 && listener.AddressFamily == AddressFamily.InterNetwork;
}
