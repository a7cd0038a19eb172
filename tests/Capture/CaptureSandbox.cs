using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// What a capture test needs from the machine, all named weft…&lt;runid&gt; and all removed on
/// Dispose, also after a failure: a cgroup of the test's own under the cgroup2 mount, network
/// namespaces, a pin root on bpffs, and the client processes it started (stopped by pid).
/// Nothing is added to the machine's own network namespace.
/// </summary>
internal sealed class CaptureSandbox : IDisposable
{
    private readonly List<string> _namespaces = [];
    private readonly List<Process> _processes = [];

    public CaptureSandbox()
    {
        Privileged.Require();
        RunId = Guid.NewGuid().ToString("N")[..8];
        var cgroup2 = File.ReadLines("/proc/self/mountinfo")
            .Select(l => l.Split(' '))
            .Where(f => Array.IndexOf(f, "-") is var dash && dash > 0 && f[dash + 1] == "cgroup2")
            .Select(f => f[4])
            .FirstOrDefault() ?? throw new InvalidOperationException("no cgroup2 mount in /proc/self/mountinfo");
        CgroupPath = Path.Combine(cgroup2, "weft-" + RunId);
        Directory.CreateDirectory(CgroupPath);
        PinRoot = "/sys/fs/bpf/weft-test-" + RunId;
    }

    public string RunId { get; }

    public string CgroupPath { get; }

    public string PinRoot { get; }

    public CaptureOptions Options => new(PinRoot, CgroupPath);

    /// <summary>
    /// A netns with loopback up and <paramref name="addresses"/> on one end of a veth pair whose both
    /// ends stay inside it (this kernel has no dummy driver); returns its path.
    /// </summary>
    public string AddNamespace(string suffix, params string[] addresses)
    {
        var name = $"weftcap{RunId}{suffix}";
        Ip($"netns add {name}");
        _namespaces.Add(name);
        Ip($"-n {name} link set lo up");
        if (addresses.Length > 0)
        {
            Ip($"-n {name} link add eth0 type veth peer name eth1");
            foreach (var a in addresses)
            {
                Ip($"-n {name} addr add {a} dev eth0");
            }
            Ip($"-n {name} link set eth1 up");
            Ip($"-n {name} link set eth0 up");
        }
        return "/var/run/netns/" + name;
    }

    /// <summary>Two namespaces joined by a veth pair (created inside them, never in the root netns).</summary>
    public (string Left, string Right) AddLinkedNamespaces(string leftAddress, string rightAddress)
    {
        var left = $"weftcap{RunId}l";
        var right = $"weftcap{RunId}r";
        foreach (var n in new[] { left, right })
        {
            Ip($"netns add {n}");
            _namespaces.Add(n);
            Ip($"-n {n} link set lo up");
        }
        Ip($"-n {left} link add eth0 type veth peer name eth0 netns {right}");
        Ip($"-n {left} addr add {leftAddress} dev eth0");
        Ip($"-n {right} addr add {rightAddress} dev eth0");
        Ip($"-n {left} link set eth0 up");
        Ip($"-n {right} link set eth0 up");
        return ("/var/run/netns/" + left, "/var/run/netns/" + right);
    }

    /// <summary>A listening TCP socket made inside the namespace.</summary>
    public static Socket Listen(string netnsPath, IPEndPoint endPoint) =>
        NetNamespace.Run(netnsPath, () =>
        {
            var s = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            s.Bind(endPoint);
            s.Listen(16);
            return s;
        });

    /// <summary>
    /// Runs a Python TCP client inside the namespace and inside the test cgroup from its first
    /// instruction; it prints "connected &lt;local port&gt;" or "refused"/"error …", then waits for
    /// the server to close. Returns the process (output read with <see cref="ReadLineAsync"/>).
    /// With <paramref name="mark"/> it sets SO_MARK first (it runs as root, so with CAP_NET_ADMIN).
    /// With <paramref name="holdBeforeConnect"/> it first prints "socket &lt;fd&gt;" and connects
    /// only after a line on its stdin (see <see cref="Release"/>), so the test can reach the socket.
    /// </summary>
    public Process StartClient(string netnsPath, string host, int port, uint mark = 0, bool holdBeforeConnect = false)
    {
        var script = string.Join("\n",
            "import socket, sys",
            $"s = socket.socket(socket.AF_INET6 if ':' in '{host}' else socket.AF_INET)",
            $"if {mark}: s.setsockopt(socket.SOL_SOCKET, 36, {mark})",
            $"if {mark}: assert s.getsockopt(socket.SOL_SOCKET, 36) == {mark}",
            $"if {(holdBeforeConnect ? 1 : 0)}: print('socket', s.fileno(), flush=True); sys.stdin.readline()",
            "s.settimeout(5)",
            "try:",
            $"    s.connect(('{host}', {port}))",
            "except ConnectionRefusedError:",
            "    print('refused', flush=True); sys.exit(0)",
            "except Exception as e:",
            "    print('error', type(e).__name__, flush=True); sys.exit(0)",
            "print('connected', s.getsockname()[1], flush=True)",
            "s.recv(16)");
        var ns = Path.GetFileName(netnsPath);
        var psi = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"echo $$ > {CgroupPath}/cgroup.procs && exec ip netns exec {ns} /usr/bin/python3 -c \"$0\"");
        psi.ArgumentList.Add(script);
        var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start client");
        _processes.Add(p);
        return p;
    }

    /// <summary>Lets a client started with holdBeforeConnect go on to connect().</summary>
    public static void Release(Process client)
    {
        client.StandardInput.WriteLine("go");
        client.StandardInput.Flush();
    }

    /// <summary>
    /// A duplicate, in this process, of a client's socket (pidfd_getfd, Linux 5.6+): the same
    /// kernel socket, so storage the test attaches to it is what the client's connect() sees. The
    /// socket keeps its netns and its cgroup (the test's), unlike one this process would make.
    /// </summary>
    public static Socket DuplicateClientSocket(Process client, int fd)
    {
        const long PidfdOpen = 434, PidfdGetfd = 438; // the same number on every architecture
        var pidfd = (int)Syscall(PidfdOpen, client.Id, 0, 0);
        if (pidfd < 0)
        {
            throw new InvalidOperationException($"pidfd_open({client.Id}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
        try
        {
            var dup = (int)Syscall(PidfdGetfd, pidfd, fd, 0);
            if (dup < 0)
            {
                throw new InvalidOperationException($"pidfd_getfd({client.Id}, {fd}) failed: errno {Marshal.GetLastPInvokeError()}");
            }
            return new Socket(new SafeSocketHandle(dup, ownsHandle: true));
        }
        finally
        {
            Close(pidfd);
        }
    }

    [DllImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static extern long Syscall(long number, long a, long b, long c);

    [DllImport("libc", EntryPoint = "close")]
    private static extern int Close(int fd);

    public static async Task<string> ReadLineAsync(Process p)
    {
        var line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10));
        if (line is null)
        {
            var err = await p.StandardError.ReadToEndAsync();
            throw new InvalidOperationException("client printed nothing: " + err);
        }
        return line;
    }

    public static async Task<Socket> AcceptAsync(Socket listener) =>
        await listener.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(10));

    public void Dispose()
    {
        var errors = new List<Exception>();
        void Try(Action a)
        {
            try
            {
                a();
            }
            catch (Exception e)
            {
                errors.Add(e);
            }
        }

        foreach (var p in _processes)
        {
            Try(() =>
            {
                if (!p.HasExited)
                {
                    p.Kill(); // by pid, only what this sandbox started
                    p.WaitForExit(5000);
                }
                p.Dispose();
            });
        }
        Try(() => BpfCapture.Uninstall(PinRoot));
        foreach (var n in _namespaces)
        {
            Try(() => NetNamespace.Release("/var/run/netns/" + n));
            Try(() => Ip($"netns del {n}"));
        }
        Try(() =>
        {
            if (Directory.Exists(CgroupPath))
            {
                Directory.Delete(CgroupPath);
            }
        });
        if (errors.Count > 0)
        {
            throw new AggregateException("sandbox cleanup failed", errors);
        }
    }

    public static void Ip(string arguments)
    {
        var psi = new ProcessStartInfo("ip")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        foreach (var a in arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"ip {arguments}: {err}");
        }
    }
}
