using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// Source ports for transparent delivery into one pod's namespace, chosen by the agent: odd ports of the namespace's
/// local port range (docs/capture.md), taken in turn per client address, so the next one is the one that address used
/// longest ago and has normally left TIME_WAIT, and never one a live delivery of this agent holds from that address.
/// bind() to port 0 searches the range and checks every candidate against every socket bound there: with 10,000
/// delivered connections held in one pod, that search took 87 % of the agent's CPU in the load suite; a bind() to one
/// given port checks one port.
/// <para>
/// The held ports must be skipped here, not by the kernel: .NET sets SO_REUSEADDR on every TCP bind, so bind() to a
/// port a connected socket holds succeeds and only connect() fails (EADDRNOTAVAIL, the same 4-tuple). Without this
/// set, each turn of the cursor over the 10,000 held ports failed 10,000 new connections (load suite, 2026-12-02).
/// </para>
/// </summary>
internal sealed class DeliveryPorts
{
    // Ports a listener holds (bind() fails with EADDRINUSE) tried before leaving the search to the kernel (port 0).
    private const int Tries = 8;

    // Cursors per client address, by hash: addresses that share one only share the turn, memory stays bounded.
    private readonly int[] _cursors = new int[256];

    // Ports live deliveries hold, per client address; an address leaves the map with its last delivery.
    private readonly Dictionary<IPAddress, HashSet<int>> _held = [];
    private readonly int _firstOdd;
    private readonly int _count;
    private readonly HashSet<int>? _reserved;

    public DeliveryPorts(int low, int high, HashSet<int>? reserved)
    {
        _firstOdd = low | 1;
        _count = Math.Max(0, ((high - _firstOdd) / 2) + 1);
        _reserved = reserved is { Count: > 0 } ? reserved : null;
        for (var i = 0; i < _cursors.Length; i++)
        {
            _cursors[i] = Random.Shared.Next();
        }
    }

    /// <summary>The kernel's default range (ip_local_port_range 32768-60999), no reserved ports.</summary>
    public static DeliveryPorts Default => new(32768, 60999, null);

    /// <summary>
    /// The current namespace's ports, from /proc/sys/net/ipv4/ip_local_port_range and ip_local_reserved_ports (run on
    /// the pod's namespace thread: /proc/sys/net shows the namespace of the thread that reads it); the default if
    /// unreadable.
    /// </summary>
    public static DeliveryPorts ReadCurrentNamespace()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            var reserved = ParseReserved(File.Exists("/proc/sys/net/ipv4/ip_local_reserved_ports") ? File.ReadAllText("/proc/sys/net/ipv4/ip_local_reserved_ports") : "");
            return range.Length == 2 && int.TryParse(range[0], CultureInfo.InvariantCulture, out var low) && int.TryParse(range[1], CultureInfo.InvariantCulture, out var high)
                && low is > 0 and <= 65535 && high >= low && high <= 65535
                ? new DeliveryPorts(low, high, reserved)
                : Default;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Default;
        }
    }

    /// <summary>"1000,2000-2010" as the set of ports it names; what does not parse is left out.</summary>
    internal static HashSet<int> ParseReserved(string text)
    {
        var ports = new HashSet<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var bounds = part.Split('-');
            if (int.TryParse(bounds[0], CultureInfo.InvariantCulture, out var first) && first is > 0 and <= 65535)
            {
                var last = bounds.Length == 2 && int.TryParse(bounds[1], CultureInfo.InvariantCulture, out var end) ? Math.Min(end, 65535) : first;
                for (var port = first; port <= last; port++)
                {
                    ports.Add(port);
                }
            }
        }

        return ports;
    }

    /// <summary>Client addresses with a held port (a bounded map: each entry is a live delivery's).</summary>
    internal int AddressesHolding
    {
        get
        {
            lock (_held)
            {
                return _held.Count;
            }
        }
    }

    /// <summary>
    /// Takes the next port of this client address's turn (odd, in the range, not reserved, not held), holding it until
    /// <see cref="Return"/>; 0 when every port of the range is reserved or held.
    /// </summary>
    internal int Take(IPAddress from)
    {
        var slot = from.GetHashCode() & (_cursors.Length - 1);
        lock (_held)
        {
            _held.TryGetValue(from, out var held);
            for (var tried = 0; tried < _count; tried++)
            {
                var port = _firstOdd + (2 * (int)((uint)++_cursors[slot] % (uint)_count));
                if ((_reserved is null || !_reserved.Contains(port)) && (held is null || !held.Contains(port)))
                {
                    Hold(from, port, held);
                    return port;
                }
            }
        }

        return 0;
    }

    /// <summary>Holds a port the kernel chose (port 0), so the turn skips it while it is live; false if already held.</summary>
    internal bool Hold(IPAddress from, int port)
    {
        lock (_held)
        {
            _held.TryGetValue(from, out var held);
            return Hold(from, port, held);
        }
    }

    private bool Hold(IPAddress from, int port, HashSet<int>? held)
    {
        if (held is null)
        {
            _held[from] = held = [];
        }

        return held.Add(port);
    }

    /// <summary>Gives back a port its delivery no longer holds (its socket is closed).</summary>
    internal void Return(IPAddress from, int port)
    {
        lock (_held)
        {
            if (_held.TryGetValue(from, out var held) && held.Remove(port) && held.Count == 0)
            {
                _held.Remove(from);
            }
        }
    }

    /// <summary>
    /// Binds <paramref name="socket"/> to <paramref name="from"/> with a port of this namespace's turn, or with port 0
    /// (the kernel's search) when <paramref name="kernelPicks"/> or no port of the turn binds; the port stays held
    /// until the socket is disposed.
    /// </summary>
    public void Bind(PodSocket socket, IPAddress from, bool kernelPicks)
    {
        if (_count > 0 && !kernelPicks)
        {
            for (var i = 0; i < Tries; i++)
            {
                var port = Take(from);
                if (port == 0)
                {
                    break;
                }

                try
                {
                    socket.Bind(new IPEndPoint(from, port));
                    socket.HoldsPortOf(this, from, port);
                    return;
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
                {
                    // a listener holds it: the next in turn
                    Return(from, port);
                }
                catch
                {
                    Return(from, port);
                    throw;
                }
            }
        }

        socket.Bind(new IPEndPoint(from, 0));
        var chosen = ((IPEndPoint)socket.LocalEndPoint!).Port;
        if (Hold(from, chosen))
        {
            socket.HoldsPortOf(this, from, chosen);
        }
    }
}
